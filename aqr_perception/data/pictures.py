"""Pictures for people: BEV of points and boxes, camera images with boxes projected.

OpenCV drawing on numpy arrays; written as PNG. Used for synthetic drives (GT only) and
by the evaluation (predictions over GT).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from aqr_perception.data.boxes import BOX_EDGES, box_corners
from aqr_perception.data.rig import Camera

#: RGB colour per class (shared with the RViz markers).
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (60, 120, 255), "truck": (230, 60, 60), "construction_vehicle": (240, 200, 40),
    "bus": (255, 150, 30), "trailer": (160, 100, 60), "barrier": (200, 200, 200),
    "motorcycle": (170, 60, 200), "bicycle": (40, 210, 220), "pedestrian": (60, 220, 90),
    "traffic_cone": (255, 120, 0),
}
GT_COLOR = (255, 255, 255)


def class_color(name: str) -> tuple[int, int, int]:
    return CLASS_COLORS.get(name, (255, 0, 255))


def draw_bev(points: np.ndarray, boxes: list[tuple[np.ndarray, list[str], bool]], half_range: float = 55.0,
             size: int = 800) -> np.ndarray:
    """BEV image (size x size RGB), x forward = up, y left = left.

    boxes: list of (boxes (N, >=7), class names, dashed?) groups, e.g. GT then predictions.
    """
    img = np.full((size, size, 3), 18, dtype=np.uint8)
    scale = size / (2 * half_range)
    to_px = lambda xy: np.stack([size / 2 - xy[..., 1] * scale, size / 2 - xy[..., 0] * scale], -1)  # noqa: E731
    for r in range(10, int(half_range) + 1, 10):
        cv2.circle(img, (size // 2, size // 2), int(r * scale), (45, 45, 45), 1)
    if len(points):
        px = to_px(points[:, :2]).astype(np.int32)
        ok = (px[:, 0] >= 0) & (px[:, 0] < size) & (px[:, 1] >= 0) & (px[:, 1] < size)
        z = np.clip((points[ok, 2] + 2.0) / 4.0, 0, 1)
        color = np.stack([80 + 175 * z, 80 + 100 * (1 - z), 200 - 120 * z], -1).astype(np.uint8)
        for dy in (0, 1):      # 2x2 dots
            for dx in (0, 1):
                img[np.minimum(px[ok, 1] + dy, size - 1), np.minimum(px[ok, 0] + dx, size - 1)] = color
    for group, names, is_pred in boxes:
        if len(group) == 0:
            continue
        corners = box_corners(np.asarray(group)[:, :7])[:, :4, :2]
        for c, name, b in zip(corners, names, group):
            color = class_color(name) if is_pred else GT_COLOR
            poly = to_px(c).astype(np.int32)
            cv2.polylines(img, [poly], True, color, 2 if is_pred else 1, cv2.LINE_AA)
            head = to_px(np.array([b[0] + np.cos(b[6]) * b[3] / 2, b[1] + np.sin(b[6]) * b[3] / 2]))
            centre = to_px(np.array(b[:2]))
            cv2.line(img, tuple(int(v) for v in centre), tuple(int(v) for v in head), color, 1, cv2.LINE_AA)
    cv2.drawMarker(img, (size // 2, size // 2), (255, 255, 255), cv2.MARKER_TRIANGLE_UP, 12, 2)
    return img


def project_box_edges(lidar2img: np.ndarray, boxes: np.ndarray) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per box the visible edge segments in pixels; edges behind the camera are clipped.

    lidar2img: (4, 4) or (3, 4) LiDAR frame -> homogeneous pixels ``(u*d, v*d, d)`` whose
    third row is the camera depth (``K4 @ lidar_to_camera``, with any image resize/crop
    folded into the first two rows); boxes: (N, >=7) in the LiDAR frame.
    """
    out = []
    if len(boxes) == 0:
        return out
    corners = box_corners(np.asarray(boxes)[:, :7])
    hom = np.concatenate([corners, np.ones_like(corners[..., :1])], -1) @ np.asarray(lidar2img, np.float64)[:3].T
    for c in hom:
        segs = []
        for i, j in BOX_EDGES:
            a, b = c[i], c[j]
            if a[2] < 0.1 and b[2] < 0.1:
                continue
            if a[2] < 0.1 or b[2] < 0.1:      # homogeneous pixels are linear in the point: clip at depth 0.1
                s = (0.1 - a[2]) / (b[2] - a[2])
                p = a + s * (b - a)
                a, b = (p, b) if a[2] < 0.1 else (a, p)
            segs.append((a[:2] / a[2], b[:2] / b[2]))
        out.append(segs)
    return out


def draw_boxes(img: np.ndarray, lidar2img: np.ndarray, boxes: list[tuple[np.ndarray, list[str], bool]],
               title: str = "") -> np.ndarray:
    """Copy of ``img`` (H, W, 3 RGB) with box groups projected by ``lidar2img``; GT white,
    predictions by class; ``title`` written top left."""
    out = img.copy()
    for group, names, is_pred in boxes:
        for segs, name in zip(project_box_edges(lidar2img, group), names):
            color = class_color(name) if is_pred else GT_COLOR
            for pa, pb in segs:
                ok, p1, p2 = cv2.clipLine((0, 0, out.shape[1], out.shape[0]),
                                          tuple(int(v) for v in np.clip(pa, -1e5, 1e5)),
                                          tuple(int(v) for v in np.clip(pb, -1e5, 1e5)))
                if ok:
                    cv2.line(out, p1, p2, color, 2 if is_pred else 1, cv2.LINE_AA)
    if title:
        cv2.putText(out, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def draw_camera(img: np.ndarray, cam: Camera, boxes: list[tuple[np.ndarray, list[str], bool]]) -> np.ndarray:
    """``draw_boxes`` for a rig camera's full-size image, titled with its name."""
    return draw_boxes(img, cam.lidar2img, boxes, cam.name)


def compose(bev: np.ndarray, cams: list[np.ndarray], cols: int = 3) -> np.ndarray:
    """BEV on the left, camera tiles (rows of ``cols``) on the right, same total height."""
    if not cams:
        return bev
    rows = [np.concatenate(cams[i:i + cols] + [np.zeros_like(cams[0])] * (cols - len(cams[i:i + cols])), 1)
            for i in range(0, len(cams), cols)]
    grid = np.concatenate(rows, 0)
    scale = bev.shape[0] / grid.shape[0]
    grid = cv2.resize(grid, (int(grid.shape[1] * scale), bev.shape[0]), interpolation=cv2.INTER_AREA)
    return np.concatenate([bev, grid], 1)


def save_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def drive_picture(path: Path, data: dict, cams: list[Camera], cfg) -> None:
    """One picture of a synthetic drive: BEV of points + GT, six cameras with GT."""
    gt = [(data["boxes"], data["classes"], False)]
    bev = draw_bev(data["points"], gt)
    images = data.get("images", {})
    tiles = [draw_camera(images[c.name], c, gt) if c.name in images
             else np.zeros((c.height, c.width, 3), np.uint8) for c in cams]
    save_png(path, compose(bev, tiles))
