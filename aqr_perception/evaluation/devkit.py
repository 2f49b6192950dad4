"""The nuScenes devkit's detection metric functions (``nuscenes.eval.{common,detection}``).

The devkit is installed with ``--no-deps`` (requirements-nodeps.txt: it pins numpy<2; the
parts used here work with numpy 2), and requirements.txt pins what its package imports
(scikit-learn, cachetools, pyquaternion, matplotlib), so the whole devkit loads: these
functions here, and ``NuScenes`` / ``DetectionEval`` for converted datasets
(evaluation/submission.py).
"""
from __future__ import annotations

from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.common.utils import center_distance
from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
from nuscenes.eval.detection.constants import TP_METRICS
from nuscenes.eval.detection.data_classes import (
    DetectionBox,
    DetectionConfig,
    DetectionMetricDataList,
    DetectionMetrics,
)

__all__ = ["EvalBoxes", "DetectionBox", "DetectionConfig", "DetectionMetrics", "DetectionMetricDataList",
           "accumulate", "calc_ap", "calc_tp", "center_distance", "TP_METRICS"]
