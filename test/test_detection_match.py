"""``evaluation.compare.match_detections`` (how far another runtime moves the detections)
against a brute-force search over every one-to-one assignment."""
from itertools import permutations

import numpy as np

from aqr_perception.evaluation.answers import FrameAnswer
from aqr_perception.evaluation.compare import match_detections


def _answer(boxes, scores, names) -> FrameAnswer:
    n = len(scores)
    return FrameAnswer(np.asarray(boxes, float), np.asarray(scores, float), list(names), np.ones(n), np.ones(n))


def _brute_force(x: FrameAnswer, y: FrameAnswer, confident: float, near_m: float) -> tuple[int, float]:
    """(unmatched, summed distance of the matched) of the assignment with the least total
    same-class centre distance, tried over every injection of x's confident into y's kept."""
    nx, ny = int((x.scores >= confident).sum()), int((y.scores >= confident / 2).sum())
    best = None
    for perm in permutations(range(max(nx, ny)), nx):
        cost, pairs = 0.0, []
        for i, j in enumerate(perm):
            d = np.linalg.norm(x.boxes[i, :3] - y.boxes[j, :3]) if j < ny and x.names[i] == y.names[j] else 1e6
            cost += d if j < ny else 1e6
            pairs.append(d)
        if best is None or cost < best[0]:
            best = (cost, pairs)
    near = [d for d in best[1] if d < near_m]
    return nx - len(near), sum(near)


def test_matching_finds_the_optimal_one_to_one_assignment():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 6))
        boxes = np.column_stack([rng.uniform(-3, 3, (n, 3)), rng.uniform(1, 4, (n, 3)), np.zeros((n, 3))])
        names = list(rng.choice(["car", "pedestrian"], n))
        scores = rng.uniform(0.0, 1.0, n)
        order = np.argsort(-scores)
        x = _answer(boxes[order], scores[order], [names[i] for i in order])
        perm = rng.permutation(n)
        moved = boxes[perm] + np.concatenate([rng.normal(0, 0.3, (n, 3)), rng.normal(0, 0.05, (n, 3)),
                                              np.zeros((n, 3))], 1)
        y_scores = np.clip(scores[perm] + rng.normal(0, 0.05, n), 0, 1)
        y_order = np.argsort(-y_scores)
        y = _answer(moved[y_order], y_scores[y_order], [names[perm[i]] for i in y_order])
        m = match_detections({"t": x}, {"t": y}, confident=0.3, near_m=0.5)
        unmatched, matched_distance = _brute_force(x, y, 0.3, 0.5)
        assert m.total == int((x.scores >= 0.3).sum())
        assert m.unmatched == unmatched
        assert np.isclose(np.linalg.norm(m.box_diff[:, :3], axis=1).sum(), matched_distance)
        assert len(m.box_diff) == len(m.score_diff) == m.total - m.unmatched
        # detections in any order, not only by falling score: the same match
        sx, sy = rng.permutation(n), rng.permutation(n)
        shuffled = match_detections({"t": _answer(x.boxes[sx], x.scores[sx], [x.names[i] for i in sx])},
                                    {"t": _answer(y.boxes[sy], y.scores[sy], [y.names[i] for i in sy])}, 0.3, 0.5)
        assert (shuffled.total, shuffled.unmatched) == (m.total, m.unmatched)
        np.testing.assert_allclose(np.sort(shuffled.score_diff), np.sort(m.score_diff))


def test_another_class_or_a_far_box_is_no_match_and_its_frame_is_named():
    x = _answer([[0, 0, 0, 4, 2, 1.5, 0, 0, 0], [10, 0, 0, 4, 2, 1.5, 0, 0, 0]], [0.9, 0.8], ["car", "car"])
    y = _answer([[0.1, 0, 0, 4.2, 2, 1.5, 0, 0, 0], [10, 0, 0, 0.8, 0.8, 1.8, 0, 0, 0]], [0.85, 0.8],
                ["car", "pedestrian"])
    far = _answer([[0.1, 0, 0, 4.2, 2, 1.5, 0, 0, 0], [12, 0, 0, 4, 2, 1.5, 0, 0, 0]], [0.85, 0.8], ["car", "car"])
    for other in (y, far):
        m = match_detections({"a": x, "b": x}, {"a": x, "b": other})
        assert (m.total, m.unmatched, m.unmatched_frames) == (4, 1, ["b"])
        np.testing.assert_allclose(m.box_diff.max(0), [0.1, 0, 0, 0.2, 0, 0], atol=1e-12)
        np.testing.assert_allclose(sorted(m.score_diff), [0, 0, 0.05], atol=1e-12)
    # a detection scoring under half the cut in the other run is not a partner
    low = _answer(x.boxes, [0.9, 0.04], ["car", "car"])
    assert match_detections({"a": x}, {"a": low}).unmatched == 1
