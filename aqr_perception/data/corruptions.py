"""Sensor corruptions, on arrays: what the synthetic drives are generated under and what
:mod:`aqr_perception.data.corrupt_bag` applies to a recorded bag.

The conditions follow the corruption benchmarks' families (nuScenes-C, MultiCorrupt): a
missing modality or camera, degraded points (fewer beams, no intensity), low light, fog
and a camera clock error. Points are ``(P, 4) [x, y, z, intensity]`` in the LiDAR frame
with ``ring (P,)`` the beam of each; images ``(H, W, C)`` uint8.
"""
from __future__ import annotations

import numpy as np

CONDITIONS = ("clean", "no_lidar", "reduced_lidar", "no_intensity", "no_cameras", "one_camera_missing",
              "dark", "fog", "time_offset")
#: fog attenuates with the scene's depth, which only the simulator has
NEEDS_DEPTH = ("fog",)
FOG_VISIBILITY_M = 25.0
DARK_GAIN, DARK_NOISE = 0.18, 6.0


def reduced_lidar_keep(ring: np.ndarray, keep_every: int, drop: float, rng: np.random.Generator) -> np.ndarray:
    """(P,) bool: every ``keep_every``-th beam, and of its points a share ``1 - drop`` at random
    (a LiDAR with fewer beams, sparser returns)."""
    return (ring % keep_every == 0) & (rng.uniform(size=ring.shape) >= drop)


def darken(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Low light: ``DARK_GAIN`` times the brightness plus sensor noise (sigma ``DARK_NOISE``);
    any 8-bit channel order."""
    out = image.astype(np.float32) * DARK_GAIN + rng.normal(0, DARK_NOISE, image.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def fog(rgb: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Fog: each pixel fades towards grey with its depth (m, (H, W)), visibility ``FOG_VISIBILITY_M``."""
    t = np.exp(-np.minimum(depth, 1e3) / FOG_VISIBILITY_M)[..., None]
    return np.clip(rgb * t + 200.0 * (1 - t), 0, 255).astype(np.uint8)


def cameras_removed(condition: str, cameras: list[str], missing_camera: str) -> set[str]:
    """The cameras that deliver nothing under ``condition``."""
    if condition == "no_cameras":
        return set(cameras)
    if condition == "one_camera_missing":
        return {missing_camera} & set(cameras)
    return set()
