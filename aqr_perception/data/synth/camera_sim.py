"""Camera images by rasterising the world: sky, road with lane markings, shaded boxes.

Everything is drawn through the camera's own calibration (K and lidar_to_camera), so a
box's projection matches its pixels. Besides the RGB image the renderer returns an
object-id image and a depth image (used for fog and by the tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from aqr_perception.data.boxes import BOX_FACES, FACE_NORMALS, box_corners, yaw_matrix
from aqr_perception.data.rig import Camera
from aqr_perception.data.synth import world as W

NEAR = 0.1
LIGHT = np.array([0.4, 0.3, 0.87]) / np.linalg.norm([0.4, 0.3, 0.87])   # sun direction, global frame
SKY_TOP, SKY_HORIZON = np.array([90, 140, 215.0]), np.array([200, 220, 240.0])
ASPHALT, CURB, GRASS, MARKING = np.array([70, 70, 74.0]), np.array([150, 150, 145.0]), \
    np.array([80, 120, 60.0]), np.array([235, 235, 225.0])


@dataclass
class RenderOutput:
    """rgb (H, W, 3) uint8, object ids (H, W) int32 (-1 = background), depth (H, W) float32 m."""

    rgb: np.ndarray
    ids: np.ndarray
    depth: np.ndarray


def _background(cam: Camera, lidar_to_global: np.ndarray, lidar_height: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky and ground per pixel: (H, W, 3) float colours and (H, W) depth."""
    h, w = cam.height, cam.width
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays_cam = np.stack([(u - cam.K[0, 2]) / cam.K[0, 0], (v - cam.K[1, 2]) / cam.K[1, 1], np.ones_like(u)], -1)
    cam_to_lidar = np.linalg.inv(cam.lidar_to_camera)
    dirs = rays_cam @ cam_to_lidar[:3, :3].T                         # LiDAR frame
    origin = cam_to_lidar[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(dirs[..., 2] < -1e-6, (-lidar_height - origin[2]) / dirs[..., 2], np.inf)
    ground = np.isfinite(t)
    hit = origin + dirs * np.where(ground, t, 0)[..., None]
    g = hit @ lidar_to_global[:3, :3].T + lidar_to_global[:3, 3]    # global ground coordinates
    gy, gx = np.abs(g[..., 1]), g[..., 0]
    col = np.where((gy < W.ROAD_HALF_WIDTH)[..., None], ASPHALT, np.where((gy < W.SIDEWALK[1])[..., None], CURB, GRASS))
    dashes = ((np.abs(np.abs(gy) - 3.5) < 0.08) & ((gx % 6.0) < 3.0)) | (np.abs(gy - 0.0) < 0.08) | \
        (np.abs(gy - W.ROAD_HALF_WIDTH) < 0.1)
    col = np.where(dashes[..., None], MARKING, col)
    # distance shading of the ground and a sky gradient above the horizon
    dist = np.linalg.norm(hit - origin, axis=-1)
    col = col * (0.75 + 0.25 * np.exp(-dist / 40.0))[..., None]
    elev = np.clip(dirs[..., 2] / np.linalg.norm(dirs, axis=-1), 0, 1)[..., None]
    sky = SKY_HORIZON + (SKY_TOP - SKY_HORIZON) * np.sqrt(elev)
    rgb = np.where(ground[..., None], col, sky)
    depth = np.where(ground, np.maximum((hit - origin) @ cam_to_lidar[:3, 2], 0.0), 1e4).astype(np.float32)
    return rgb, depth


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon (K, 3) against z >= NEAR."""
    out = []
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        ina, inb = a[2] >= NEAR, b[2] >= NEAR
        if ina:
            out.append(a)
        if ina != inb:
            s = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + s * (b - a))
    return np.array(out)


def render(cam: Camera, boxes_lidar: np.ndarray, colors: list[tuple[int, int, int]], lidar_to_global: np.ndarray,
           lidar_height: float, classes: list[str] | None = None) -> RenderOutput:
    """Render one camera image of boxes given in the LiDAR frame (painter's algorithm)."""
    rgb, depth = _background(cam, lidar_to_global, lidar_height)
    ids = np.full((cam.height, cam.width), -1, dtype=np.int32)
    if len(boxes_lidar):
        corners = box_corners(boxes_lidar)                            # (N, 8, 3) LiDAR frame
        hom = np.concatenate([corners, np.ones_like(corners[..., :1])], -1)
        cam_pts = hom @ cam.lidar_to_camera.T                          # (N, 8, 4)
        cam_origin_lidar = np.linalg.inv(cam.lidar_to_camera)[:3, 3]
        normals = np.einsum("nij,fj->nfi", yaw_matrix(boxes_lidar[:, 6]), FACE_NORMALS)  # (N, 6, 3)
        light = lidar_to_global[:3, :3].T @ LIGHT
        faces = []
        for n in range(len(boxes_lidar)):
            for f, idx in enumerate(BOX_FACES):
                centre = corners[n, idx].mean(0)
                if normals[n, f] @ (cam_origin_lidar - centre) <= 0:  # back face
                    continue
                poly = cam_pts[n, idx, :3]
                if np.all(poly[:, 2] < NEAR):
                    continue
                faces.append((float(poly[:, 2].mean()), n, f, poly))
        faces.sort(key=lambda x: -x[0])                               # far to near
        canvas = np.clip(rgb, 0, 255).astype(np.uint8)
        for mean_depth, n, f, poly in faces:
            poly = _clip_near(poly) if np.any(poly[:, 2] < NEAR) else poly
            if len(poly) < 3:
                continue
            uv = poly[:, :2] / poly[:, 2:3] @ cam.K[:2, :2].T + cam.K[:2, 2]
            if np.all(uv[:, 0] < -1e4) or np.all(uv[:, 0] > 1e4 + cam.width):
                continue
            pix = np.round(np.clip(uv, -1e5, 1e5) * 16).astype(np.int32)  # 4 fractional bits
            shade = 0.45 + 0.55 * max(0.0, float(normals[n, f] @ light))
            base = np.array(colors[n], dtype=np.float32)
            if classes is not None and classes[n] == "traffic_cone" and f < 4:
                base = np.array([255, 120, 0], dtype=np.float32)
            color = tuple(int(c) for c in np.clip(base * shade, 0, 255))
            cv2.fillPoly(canvas, [pix], color, lineType=cv2.LINE_AA, shift=4)
            cv2.polylines(canvas, [pix], True, tuple(c // 2 for c in color), 1, cv2.LINE_AA, shift=4)
            cv2.fillPoly(ids, [pix], int(n), shift=4)
            cv2.fillPoly(depth, [pix], float(mean_depth), shift=4)
        rgb = canvas
    return RenderOutput(np.clip(rgb, 0, 255).astype(np.uint8), ids, depth)
