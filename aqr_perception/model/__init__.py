"""The AQR-biased CMT detector in pure torch (no ROS imports in this package)."""
from aqr_perception.model.detector import (
                                           CmtAqrDetector,
                                           DetectorInputs,
                                           DetectorOutput,
                                           FramePrediction,
                                           build_detector,
)

__all__ = ["CmtAqrDetector", "DetectorInputs", "DetectorOutput", "FramePrediction", "build_detector"]
