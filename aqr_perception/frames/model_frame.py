"""The frame the model computes in: the LiDAR frame turned about z by
``NodeConfig.lidar_to_model_yaw_deg``.

A detector learns its scene in its training data's LiDAR frame (nuScenes' LIDAR_TOP has x
to the right and y forward; a REP-103 LiDAR has x forward), and its BEV features are not
rotation-invariant. The points and the LiDAR->image projections go to the model turned,
and its boxes and velocities come back turned into the LiDAR frame, so everything outside
the model (published detections, debug images, evaluation) stays in the LiDAR frame.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from aqr_perception.detections import FrameDetections
from aqr_perception.frames.preprocess import ModelArrays


def yaw_rotation(deg: float) -> np.ndarray:
    """(4, 4) rotation about z by ``deg`` (exact for multiples of 90: the usual mounts)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    c, s = (round(c), round(s)) if deg % 90 == 0 else (c, s)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def to_model_frame(arrays: ModelArrays, deg: float) -> ModelArrays:
    """``arrays`` (LiDAR frame) with the points turned by ``deg`` and each view's
    ``lidar2img`` taking model-frame points: ``lidar2img @ inv(R)``. A copy; 0 returns ``arrays``."""
    if deg == 0:
        return arrays
    R = yaw_rotation(deg)
    points = arrays.points.copy()
    points[:, :2] = (points[:, :2].astype(np.float64) @ R[:2, :2].T).astype(np.float32)
    lidar2img = (arrays.lidar2img.astype(np.float64) @ R.T).astype(np.float32)     # inv(R) = R.T
    return replace(arrays, points=points, lidar2img=lidar2img)


def from_model_frame(det: FrameDetections, deg: float) -> FrameDetections:
    """Detections of the model frame in the LiDAR frame: centres and velocities turned back
    by ``deg``, headings less ``deg`` (wrapped to [-pi, pi)). 0 returns ``det``."""
    if deg == 0 or not len(det):
        return det
    back = yaw_rotation(-deg)[:2, :2]
    boxes = np.array(det.boxes, dtype=np.float64)
    boxes[:, 0:2] = boxes[:, 0:2] @ back.T
    boxes[:, 7:9] = boxes[:, 7:9] @ back.T
    boxes[:, 6] = (boxes[:, 6] - math.radians(deg) + math.pi) % (2 * math.pi) - math.pi
    return replace(det, boxes=boxes.astype(det.boxes.dtype))
