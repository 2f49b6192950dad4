"""Evaluation glue against hand-computed nuScenes numbers (the devkit does the matching)."""
import numpy as np
import pytest

from aqr_perception.config import NUSCENES_CLASSES, EvalConfig
from aqr_perception.evaluation.metrics import FrameBoxes, default_attribute, evaluate

SPEEDS = {"car": 5.0, "truck": 0.0, "construction_vehicle": 0.0, "bus": 8.0, "trailer": 0.0, "barrier": 0.0,
          "motorcycle": 4.0, "bicycle": 0.0, "pedestrian": 1.2, "traffic_cone": 0.0}


def _scene(n_frames=4, seed=0):
    """GT with every class in every frame, within class range, seen by the LiDAR."""
    rng = np.random.default_rng(seed)
    gt = {}
    for f in range(n_frames):
        ego = np.array([100.0 * f, 5.0, 0.0])
        rows, names, attrs = [], [], []
        for k, name in enumerate(NUSCENES_CLASSES):
            ang = 2 * np.pi * k / len(NUSCENES_CLASSES)
            pos = ego + np.array([12 * np.cos(ang), 12 * np.sin(ang), 0.8])
            yaw = rng.uniform(-np.pi, np.pi)
            v = SPEEDS[name] * np.array([np.cos(yaw), np.sin(yaw)])
            rows.append([*pos, 4.0, 2.0, 1.6, yaw, *v])
            names.append(name)
            attrs.append(default_attribute(name, SPEEDS[name]))
        gt[f"t{f}"] = FrameBoxes(np.array(rows), names, ego, attributes=attrs,
                                 num_pts=np.full(len(names), 50))
    return gt


def _as_pred(gt, shift=(0.0, 0.0)):
    return {t: FrameBoxes(g.boxes + np.array([shift[0], shift[1], 0, 0, 0, 0, 0, 0, 0]), g.names, g.ego_xyz,
                          scores=np.linspace(0.9, 0.5, len(g.names))) for t, g in gt.items()}


def test_perfect_predictions_score_one():
    gt = _scene()
    r = evaluate(gt, _as_pred(gt), list(NUSCENES_CLASSES), EvalConfig())
    assert r.mAP == pytest.approx(1.0)
    for v in r.tp_errors.values():
        assert v == pytest.approx(0.0, abs=1e-6)
    assert r.NDS == pytest.approx(1.0)


def test_shifted_boxes_give_the_expected_ate_map_and_nds():
    gt = _scene()
    r = evaluate(gt, _as_pred(gt, shift=(0.7, 0.0)), list(NUSCENES_CLASSES), EvalConfig())
    # 0.7 m off: no match at 0.5 m, perfect at 1, 2, 4 m -> AP = 3/4 for every class
    assert r.mAP == pytest.approx(0.75)
    assert r.tp_errors["mATE"] == pytest.approx(0.7, abs=1e-6)
    for k in ("mASE", "mAOE", "mAVE", "mAAE"):
        assert r.tp_errors[k] == pytest.approx(0.0, abs=1e-6)
    # NDS = (5 mAP + sum(1 - min(1, err))) / 10
    assert r.NDS == pytest.approx((5 * 0.75 + (1 - 0.7) + 4) / 10)


def test_missing_predictions_and_false_positives():
    gt = _scene()
    pred = _as_pred(gt)
    # drop half the frames' predictions: recall 0.5 for every class; add far false positives
    for t in ("t0", "t1"):
        pred[t] = FrameBoxes(np.zeros((0, 9)), [], gt[t].ego_xyz, scores=np.zeros(0))
    r = evaluate(gt, pred, list(NUSCENES_CLASSES), EvalConfig())
    # nuScenes AP: precision sampled at 101 recall points, points at recall <= min_recall (0.1)
    # dropped, min_precision (0.1) subtracted per point and clipped at 0, mean / (1 - 0.1).
    # Precision is 1 up to recall 0.5 and 0 beyond: 40 of the 90 points count 0.9 each.
    recalls = np.linspace(0, 1, 101)
    prec = np.where(recalls <= 0.5 + 1e-9, 1.0, 0.0)[11:]
    expected_ap = float(np.mean(np.clip(prec - 0.1, 0, None))) / 0.9
    assert r.mAP == pytest.approx(expected_ap, abs=1e-6)


def test_range_filter_and_unseen_gt():
    gt = _scene(n_frames=1)
    g = gt["t0"]
    g.num_pts[0] = 0                          # the car is not seen: not evaluated
    pred = _as_pred(gt)
    far = pred["t0"].boxes.copy()
    far[:, 0] += 70.0                         # every prediction beyond every class range
    extra = FrameBoxes(np.vstack([pred["t0"].boxes, far]), g.names * 2, g.ego_xyz,
                       scores=np.concatenate([pred["t0"].scores, np.full(10, 0.99)]))
    r = evaluate(gt, {"t0": extra}, list(NUSCENES_CLASSES), EvalConfig())
    assert r.num_gt == 9 and r.num_pred == 10            # far boxes filtered before matching
    assert r.per_class_ap["truck"] == pytest.approx(1.0)


def test_absent_classes_are_marked_and_the_present_mean_leaves_them_out():
    """A bag without trucks (or any class) scores them AP 0 and error 1 in the devkit's mAP
    and NDS; the tables say n/a for them, count the GT and predictions per class, and give
    the mean over the classes present beside the devkit's."""
    from aqr_perception.evaluation.report import metrics_table, per_class_table

    present = ["car", "pedestrian"]
    gt = {t: FrameBoxes(g.boxes[[NUSCENES_CLASSES.index(c) for c in present]], list(present), g.ego_xyz,
                        attributes=[g.attributes[NUSCENES_CLASSES.index(c)] for c in present],
                        num_pts=np.full(2, 50)) for t, g in _scene().items()}
    r = evaluate(gt, _as_pred(gt), list(NUSCENES_CLASSES), EvalConfig())
    assert r.per_class_gt == {c: (4 if c in present else 0) for c in NUSCENES_CLASSES}
    assert r.per_class_pred == r.per_class_gt
    assert r.mAP == pytest.approx(2 / 10)                   # the devkit: eight absent classes at AP 0
    assert r.mAP_present == pytest.approx(1.0)              # perfect on the two that are there
    assert r.NDS_present == pytest.approx(1.0, abs=1e-6) and r.NDS < 0.5
    table = per_class_table(r)
    truck = next(line for line in table.splitlines() if line.startswith("| truck |"))
    assert truck == "| truck | 0 | 0 | n/a | n/a | n/a | n/a | n/a | n/a |"
    car = next(line for line in table.splitlines() if line.startswith("| car |"))
    assert car.startswith("| car | 4 | 4 | 1.000 |")
    row = metrics_table({"bag": r}).splitlines()[-1]
    assert "| 0.200 |" in row and "| 1.000 |" in row and "| 2/10 |" in row
