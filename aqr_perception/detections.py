"""Decoded detections of one frame as numpy arrays (no torch, no ROS): the hand-over
from the model runtime to the node's message building and to evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameDetections:
    """Decoded detections of one frame (all arrays share the first dimension N).

    boxes:  (N, 9) float, ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` in the LiDAR frame
    scores: (N,) float in [0, 1]
    labels: (N,) int, index into the class names
    query_index: (N,) int, the object query each detection came from
    lidar_weight, camera_weight: (N, L) float, AQR router weights per decoder layer
        (L >= 1; the last column is the last layer)
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    query_index: np.ndarray
    lidar_weight: np.ndarray
    camera_weight: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, index: np.ndarray) -> FrameDetections:
        """The detections at ``index`` (in that order)."""
        return FrameDetections(self.boxes[index], self.scores[index], self.labels[index], self.query_index[index],
                               self.lidar_weight[index], self.camera_weight[index])
