"""The nuScenes devkit's detection metric functions, imported without the rest of the devkit.

``import nuscenes`` executes ``nuscenes/__init__.py``, which loads the dataset API
(scikit-learn, Pillow, map tools...). The metric modules need none of that, so the
package is registered here with its search path only, and only
``nuscenes.eval.{common,detection}`` are imported (numpy 2 works for them).
"""
from __future__ import annotations

import importlib.util
import sys
import types


def _register_light_package() -> None:
    if "nuscenes" in sys.modules:
        return
    spec = importlib.util.find_spec("nuscenes")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nuscenes-devkit is not installed (scripts/setup installs it with --no-deps)")
    pkg = types.ModuleType("nuscenes")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    sys.modules["nuscenes"] = pkg


_register_light_package()

from nuscenes.eval.common.data_classes import EvalBoxes  # noqa: E402
from nuscenes.eval.common.utils import center_distance  # noqa: E402
from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp  # noqa: E402
from nuscenes.eval.detection.constants import TP_METRICS  # noqa: E402
from nuscenes.eval.detection.data_classes import (  # noqa: E402
    DetectionBox,
    DetectionConfig,
    DetectionMetricDataList,
    DetectionMetrics,
)

__all__ = ["EvalBoxes", "DetectionBox", "DetectionConfig", "DetectionMetrics", "DetectionMetricDataList",
           "accumulate", "calc_ap", "calc_tp", "center_distance", "TP_METRICS"]
