"""3D box geometry in numpy (no torch, no ROS).

Boxes: ``(N, 9)`` rows ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` -- centre (gravity
centre), full extents along the box's own x (heading) / y / z axes, yaw about +z,
velocity; the convention of the model's box coder and of the published messages.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

#: Corner order: bottom face counter-clockwise from (+x, +y), then the top face likewise.
_CORNER_SIGNS = np.array([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                          [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], dtype=np.float64) * 0.5
#: The 6 faces as corner indices, counter-clockwise seen from outside; outward normals in box axes.
BOX_FACES = np.array([[0, 3, 7, 4], [1, 5, 6, 2], [0, 4, 5, 1], [3, 2, 6, 7], [4, 7, 6, 5], [0, 1, 2, 3]])
FACE_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
#: The 12 edges as corner index pairs.
BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                      [0, 4], [1, 5], [2, 6], [3, 7]])


def yaw_matrix(yaw: np.ndarray) -> np.ndarray:
    """(N,) yaw -> (N, 3, 3) rotations about +z."""
    c, s = np.cos(yaw), np.sin(yaw)
    z, o = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, >=7) boxes -> (N, 8, 3) corners in the boxes' frame."""
    boxes = np.asarray(boxes, dtype=np.float64)
    local = _CORNER_SIGNS[None] * boxes[:, None, 3:6]
    return np.einsum("nij,nkj->nki", yaw_matrix(boxes[:, 6]), local) + boxes[:, None, :3]


def transform_boxes(boxes: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Express (N, 9) boxes in another frame; ``T`` (4, 4) maps old-frame points to the new one.

    Assumes ``T`` rotates about z only (ground vehicles): yaw shifts by T's heading,
    velocities rotate with it.
    """
    boxes = np.asarray(boxes, dtype=np.float64).copy()
    R, t = T[:3, :3], T[:3, 3]
    boxes[:, :3] = boxes[:, :3] @ R.T + t
    boxes[:, 6] = wrap_angle(boxes[:, 6] + np.arctan2(R[1, 0], R[0, 0]))
    if boxes.shape[1] >= 9:
        boxes[:, 7:9] = boxes[:, 7:9] @ R[:2, :2].T
    return boxes


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles to (-pi, pi]."""
    return -((-np.asarray(a) + np.pi) % (2 * np.pi) - np.pi)


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(P, 3) points, (N, >=7) boxes -> (P, N) bool, point inside box (grown by ``margin``)."""
    rel = points[:, None, :3] - boxes[None, :, :3]
    R = yaw_matrix(boxes[:, 6])
    local = np.einsum("nji,pnj->pni", R, rel)        # R^T @ rel
    return np.all(np.abs(local) <= boxes[None, :, 3:6] / 2 + margin, axis=-1)


def pose_matrix(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """(4, 4) transform of a frame at (x, y, z) with heading ``yaw`` (child -> parent)."""
    T = np.eye(4)
    T[:3, :3] = yaw_matrix(np.array([yaw]))[0]
    T[:3, 3] = (x, y, z)
    return T


def yaw_to_quaternion(yaw: np.ndarray) -> np.ndarray:
    """(N,) yaw about +z -> (N, 4) quaternions ``[x, y, z, w]``."""
    half = 0.5 * np.asarray(yaw, dtype=np.float64)
    q = np.zeros((half.shape[0], 4))
    q[:, 2] = np.sin(half)
    q[:, 3] = np.cos(half)
    return q


def quaternion_to_yaw(q: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions ``[x, y, z, w]`` -> (N,) yaw about +z (roll/pitch ignored)."""
    q = np.asarray(q, dtype=np.float64)
    x, y, z, w = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def yaw_quaternion_wxyz(yaw: float) -> list[float]:
    """Yaw about +z -> the quaternion ``[w, x, y, z]`` (nuScenes' order)."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def rotation_wxyz(T: np.ndarray) -> list[float]:
    """The rotation of a (4, 4) or (3, 3) transform as a quaternion ``[w, x, y, z]`` (nuScenes' order)."""
    x, y, z, w = Rotation.from_matrix(np.asarray(T)[:3, :3]).as_quat()
    return [float(w), float(x), float(y), float(z)]


def pose_wxyz(translation, rotation: list[float]) -> np.ndarray:
    """(4, 4) from a translation and a quaternion ``[w, x, y, z]`` (nuScenes' ego poses, sensors, boxes)."""
    w, x, y, z = rotation
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
    T[:3, 3] = translation
    return T
