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


def turn_boxes(boxes: np.ndarray, deg: float) -> np.ndarray:
    """(N, 9) ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` turned about z by ``deg``: centres and
    velocities rotated, headings plus ``deg`` (wrapped to [-pi, pi]); same dtype."""
    R = yaw_rotation(deg)[:2, :2]
    out = np.array(boxes, dtype=np.float64)
    out[:, 0:2] = out[:, 0:2] @ R.T
    out[:, 7:9] = out[:, 7:9] @ R.T
    out[:, 6] = (out[:, 6] + math.radians(deg) + math.pi) % (2 * math.pi) - math.pi
    return out.astype(np.asarray(boxes).dtype)


def from_model_frame(det: FrameDetections, deg: float) -> FrameDetections:
    """Detections of the model frame in the LiDAR frame (turned back by ``deg``). 0 returns ``det``."""
    if deg == 0 or not len(det):
        return det
    return replace(det, boxes=turn_boxes(det.boxes, -deg))
