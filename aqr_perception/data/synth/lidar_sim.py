"""Roof LiDAR by ray casting against the ground plane and oriented boxes (vectorised numpy).

A 32-beam spinning LiDAR (HDL-32E-like: elevations -30.67 to +10.67 deg), one full
revolution per sweep. Frame: the LiDAR frame (x forward, y left, z up, origin at the
sensor, ground at z = -lidar_height). Motion during a sweep is ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aqr_perception.data.boxes import yaw_matrix

GROUND_REFLECTIVITY = 12.0


@dataclass(frozen=True)
class LidarModel:
    """Beam layout and sensor imperfections."""

    beams: int = 32
    azimuth_steps: int = 1080
    min_elevation_deg: float = -30.67
    max_elevation_deg: float = 10.67
    max_range: float = 80.0
    min_range: float = 1.0
    range_noise: float = 0.02
    dropout: float = 0.03

    def directions(self) -> tuple[np.ndarray, np.ndarray]:
        """(R, 3) unit ray directions and (R,) ring index, ring-major."""
        elev = np.deg2rad(np.linspace(self.min_elevation_deg, self.max_elevation_deg, self.beams))
        az = np.linspace(-np.pi, np.pi, self.azimuth_steps, endpoint=False)
        e, a = np.meshgrid(elev, az, indexing="ij")
        d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
        ring = np.repeat(np.arange(self.beams, dtype=np.uint16), self.azimuth_steps)
        return d, ring


def ray_box_hits(dirs: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slab test of rays from the origin against (N, >=7) oriented boxes.

    Returns:
        t: (R,) distance to the nearest box hit (inf where none)
        box: (R,) index of that box (-1 where none)
        normal_cos: (R,) |cos| between the ray and the hit face's normal
    """
    r = dirs.shape[0]
    if boxes.shape[0] == 0:
        return np.full(r, np.inf), np.full(r, -1), np.zeros(r)
    Rt = np.transpose(yaw_matrix(boxes[:, 6]), (0, 2, 1))          # world -> box axes
    o = np.einsum("nij,nj->ni", Rt, -boxes[:, :3])                  # (N, 3) origin in box axes
    d = np.einsum("nij,rj->rni", Rt, dirs)                          # (R, N, 3)
    half = boxes[:, 3:6] / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-half - o) * inv
        t2 = (half - o) * inv
    tmin_axes = np.minimum(t1, t2)
    tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
    tmin = np.nanmax(tmin_axes, axis=-1)
    hit = (tmax >= np.maximum(tmin, 0)) & (tmin > 0)
    t = np.where(hit, tmin, np.inf)
    best = np.argmin(t, axis=1)
    t_best = t[np.arange(r), best]
    axis = np.nanargmax(tmin_axes[np.arange(r), best], axis=-1)
    cos = np.abs(d[np.arange(r), best, axis])
    has = np.isfinite(t_best)
    return t_best, np.where(has, best, -1), np.where(has, cos, 0.0)


def simulate_sweep(boxes_lidar: np.ndarray, reflectivity: np.ndarray, lidar_height: float, model: LidarModel,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sweep.

    Args:
        boxes_lidar: (N, >=7) boxes in the LiDAR frame; reflectivity: (N,) 0..255.
    Returns:
        points (P, 4) float32 ``[x, y, z, intensity]`` and ring (P,) uint16.
    """
    dirs, ring = model.directions()
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 2] < -1e-6, -lidar_height / dirs[:, 2], np.inf)
    t_box, box_idx, cos_box = ray_box_hits(dirs, boxes_lidar)
    use_box = t_box < t_ground
    t = np.where(use_box, t_box, t_ground)
    cos_ground = np.abs(dirs[:, 2])
    cos = np.where(use_box, cos_box, cos_ground)
    refl = np.where(use_box, reflectivity[np.clip(box_idx, 0, None)] if len(reflectivity) else 0.0,
                    GROUND_REFLECTIVITY)
    keep = np.isfinite(t) & (t <= model.max_range) & (t >= model.min_range)
    keep &= rng.uniform(size=t.shape) >= model.dropout
    t = np.where(keep, t, 0.0) + rng.normal(0.0, model.range_noise, t.shape)
    intensity = np.clip(refl * (0.35 + 0.65 * cos) + rng.normal(0, 2.0, t.shape), 0, 255)
    pts = dirs * t[:, None]
    out = np.concatenate([pts, intensity[:, None]], axis=1)[keep].astype(np.float32)
    return out, ring[keep]
