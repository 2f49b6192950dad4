"""The BEV picture people read: distinct class colours, a legend, metric axes, scores."""
from __future__ import annotations

import itertools

import numpy as np

from aqr_perception.data.pictures import CLASS_COLORS, GT_COLOR, draw_bev


def _present(img: np.ndarray, color, region=None, tol: int = 6) -> int:
    part = img if region is None else img[region]
    return int((np.abs(part.astype(int) - np.array(color)).sum(-1) <= tol).sum())


def test_the_ten_classes_have_distinct_colours_far_from_the_ground_truth_white():
    colours = np.array(list(CLASS_COLORS.values()), float)
    assert len(CLASS_COLORS) == 10
    for a, b in itertools.combinations(colours, 2):
        assert np.linalg.norm(a - b) > 60
    # red-green colour blindness: compare in deuteranope and protanope views (Machado et al.
    # 2009, severity 1); the palette's closest pairs there are 40 and 36 apart
    deut = np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                     [-0.011820, 0.042940, 0.968881]])
    prot = np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                     [-0.003882, -0.048116, 1.051998]])
    for view in (deut, prot):
        seen = np.clip(colours @ view.T, 0, 255)
        for a, b in itertools.combinations(seen, 2):
            assert np.linalg.norm(a - b) > 30
    assert min(np.linalg.norm(c - np.array(GT_COLOR)) for c in colours) > 100


def test_bev_has_a_legend_scores_and_axes():
    empty = draw_bev(np.zeros((0, 3)), [])
    legend = (slice(0, 200), slice(0, 210))
    for name, color in CLASS_COLORS.items():
        assert _present(empty, color, legend) > 10, name               # a legend row per class
    assert _present(empty, GT_COLOR, legend) > 10
    box = np.array([[20.0, 0.0, 0.0, 4.0, 2.0, 1.6, 0.0, 0.0, 0.0]])
    with_score = draw_bev(np.zeros((0, 3)), [(box, ["truck"], True, np.array([0.87]))])
    without = draw_bev(np.zeros((0, 3)), [(box, ["truck"], True)])
    beside = (slice(230, 290), slice(410, 470))                        # right of the box, 20 m ahead
    truck = CLASS_COLORS["truck"]
    assert _present(without, truck, beside, 60) == 0
    assert _present(with_score, truck, beside, 60) > 15                 # "0.87" in the truck's colour
    ticks = empty[:, :7]                                               # the x ticks on the left border
    assert (ticks.max(-1) > 120).sum() >= 10


def test_camera_overlays_take_scored_groups_too():
    """The evaluation hands the camera overlays the same (boxes, names, is_pred, scores) groups."""
    from aqr_perception.data.pictures import draw_boxes

    img = np.zeros((90, 160, 3), np.uint8)
    K = np.array([[80.0, 0, 80, 0], [0, 80.0, 45, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    lidar2img = K @ np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)  # x forward
    box = np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 1.6, 0.0, 0.0, 0.0]])
    out = draw_boxes(img, lidar2img, [(box, ["car"], False), (box, ["car"], True, np.array([0.9]))])
    assert _present(out, CLASS_COLORS["car"], tol=60) > 20
