"""AP, recall and ATE by distance from the ego, against a hand-made case."""
from __future__ import annotations

import numpy as np
import pytest

from aqr_perception.config import load_config
from aqr_perception.evaluation.metrics import FrameBoxes, by_distance


def _box(x: float, y: float) -> list[float]:
    return [x, y, 0.0, 4.0, 2.0, 1.6, 0.0, 0.0, 0.0]


def test_bands_score_what_lies_in_them():
    """Cars at 10, 25 and 40 m; predictions on the first, 1 m off the second, none on the
    third (and one false one at 45 m): recall 1 / 1 / 0, ATE 0 / 1 m / 1 (the devkit's cap),
    AP 1 / 0.5 / 0."""
    full = load_config("tiny")
    cfg, classes = full.eval, list(full.model.classes)
    ego = np.zeros(3)
    gt = {"1": FrameBoxes(np.array([_box(10, 0), _box(0, 25), _box(-40, 0)]), ["car"] * 3, ego,
                          num_pts=np.array([50, 50, 50]))}
    pred = {"1": FrameBoxes(np.array([_box(10, 0), _box(0, 26), _box(0, -45)]), ["car"] * 3, ego,
                            scores=np.array([0.9, 0.8, 0.7]))}
    bands = by_distance(gt, pred, classes, cfg)
    assert list(bands) == ["0-20 m", "20-30 m", "30-50 m"]
    near, mid, far = bands.values()
    assert (near["gt"], near["pred"], mid["gt"], mid["pred"], far["gt"], far["pred"]) == (1, 1, 1, 1, 1, 1)
    assert near["recall"] == 1.0 and mid["recall"] == 1.0 and far["recall"] == 0.0
    assert near["mATE"] == pytest.approx(0.0, abs=1e-9) and mid["mATE"] == pytest.approx(1.0, abs=1e-6)
    assert far["mATE"] == 1.0                       # the devkit's error of a class without true positive
    assert near["mAP_present"] == pytest.approx(1.0) and far["mAP_present"] == 0.0
    # AP over 0.5/1/2/4 m: the 1 m-off car misses at 0.5 and 1 m (the devkit matches closer than)
    assert mid["mAP_present"] == pytest.approx(0.5, abs=1e-9)
