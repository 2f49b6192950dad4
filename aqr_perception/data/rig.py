"""A nuScenes-like sensor rig: six cameras around the roof LiDAR (numpy, no torch).

Frames: LiDAR/body frame REP-103 (x forward, y left, z up); camera optical frames
(z forward, x right, y down). ``lidar_to_camera`` maps LiDAR-frame points into a camera's
optical frame; ``lidar2img = K4 @ lidar_to_camera`` maps them to pixels ``(u*d, v*d, d, 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: nuScenes camera names and their yaw (deg, about +z from the LiDAR x axis) and horizontal FOV.
NUSCENES_LIKE_CAMERAS: tuple[tuple[str, float, float], ...] = (
    ("CAM_FRONT", 0.0, 70.0),
    ("CAM_FRONT_RIGHT", -55.0, 70.0),
    ("CAM_FRONT_LEFT", 55.0, 70.0),
    ("CAM_BACK", 180.0, 110.0),
    ("CAM_BACK_LEFT", 110.0, 70.0),
    ("CAM_BACK_RIGHT", -110.0, 70.0),
)


@dataclass
class Camera:
    """One pinhole camera: K (3, 3) for a width x height image; lidar_to_camera (4, 4)."""

    name: str
    width: int
    height: int
    K: np.ndarray
    lidar_to_camera: np.ndarray

    @property
    def lidar2img(self) -> np.ndarray:
        """(4, 4) LiDAR frame -> homogeneous pixels."""
        k4 = np.eye(4)
        k4[:3, :3] = self.K
        return k4 @ self.lidar_to_camera


def camera_extrinsic(yaw_deg: float, position: tuple[float, float, float]) -> np.ndarray:
    """lidar_to_camera (4, 4) of a level camera at ``position`` (LiDAR frame) looking along ``yaw``."""
    yaw = np.deg2rad(yaw_deg)
    forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    rot = np.stack([right, down, forward])  # rows: camera x, y, z axes in the LiDAR frame
    t = np.eye(4)
    t[:3, :3] = rot
    t[:3, 3] = -rot @ np.asarray(position, dtype=np.float64)
    return t


def nuscenes_like_rig(width: int = 1600, height: int = 900, mount_radius: float = 0.8,
                      mount_height: float = -0.3) -> list[Camera]:
    """Six cameras with nuScenes-like placement and fields of view."""
    cams = []
    for name, yaw, hfov in NUSCENES_LIKE_CAMERAS:
        f = 0.5 * width / np.tan(np.deg2rad(hfov) / 2)
        K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
        pos = (mount_radius * np.cos(np.deg2rad(yaw)), mount_radius * np.sin(np.deg2rad(yaw)), mount_height)
        cams.append(Camera(name, width, height, K, camera_extrinsic(yaw, pos)))
    return cams


def resize_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K of the same camera after scaling the image by (sx, sy)."""
    out = np.array(K, dtype=np.float64)
    out[0] *= sx
    out[1] *= sy
    return out
