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

#: RGB colour per class (shared with the RViz markers): ten distinct hues that stay apart for
#: colour-blind eyes (Okabe & Ito's palette, completed with an olive, a purple and a violet;
#: checked in simulated deuteranope and protanope views), bright enough on the dark BEV,
#: none near the white of the ground truth.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (86, 180, 233), "truck": (213, 94, 0), "construction_vehicle": (240, 228, 66),
    "bus": (0, 158, 115), "trailer": (204, 121, 167), "barrier": (0, 114, 178),
    "motorcycle": (120, 80, 255), "bicycle": (153, 153, 51), "pedestrian": (230, 159, 0),
    "traffic_cone": (170, 68, 153),
}
GT_COLOR = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(name: str) -> tuple[int, int, int]:
    return CLASS_COLORS.get(name, (255, 0, 255))


def _text(img: np.ndarray, text: str, org: tuple[int, int], color, scale: float = 0.4) -> None:
    cv2.putText(img, text, org, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)      # dark outline: legible on points
    cv2.putText(img, text, org, _FONT, scale, color, 1, cv2.LINE_AA)


def draw_bev(points: np.ndarray, boxes: list[tuple], half_range: float = 55.0, size: int = 800) -> np.ndarray:
    """BEV image (size x size RGB) of the LiDAR frame: x forward = up, y left = left.

    boxes: groups ``(boxes (N, >=7), class names, is_prediction[, scores (N,)])``, e.g. GT
    then predictions: GT thin white, predictions in their class colour with their score.
    Drawn with metric axes (ticks every 10 m on the borders), labelled range rings, a scale
    bar and a legend of the classes.
    """
    img = np.full((size, size, 3), 18, dtype=np.uint8)
    scale = size / (2 * half_range)
    to_px = lambda xy: np.stack([size / 2 - xy[..., 1] * scale, size / 2 - xy[..., 0] * scale], -1)  # noqa: E731
    for r in range(10, int(half_range) + 1, 10):
        cv2.circle(img, (size // 2, size // 2), int(r * scale), (45, 45, 45), 1)
        _text(img, f"{r} m", (size // 2 + 3, int(size / 2 - r * scale) - 3), (110, 110, 110), 0.35)
    if len(points):
        px = to_px(points[:, :2]).astype(np.int32)
        ok = (px[:, 0] >= 0) & (px[:, 0] < size) & (px[:, 1] >= 0) & (px[:, 1] < size)
        z = np.clip((points[ok, 2] + 2.0) / 4.0, 0, 1)
        # neutral greys by height, so that no point takes a class colour
        color = np.stack([70 + 80 * z, 70 + 80 * z, 85 + 80 * z], -1).astype(np.uint8)
        for dy in (0, 1):      # 2x2 dots
            for dx in (0, 1):
                img[np.minimum(px[ok, 1] + dy, size - 1), np.minimum(px[ok, 0] + dx, size - 1)] = color
    for group in boxes:
        group_boxes, names, is_pred = group[:3]
        scores = group[3] if len(group) > 3 else None
        if len(group_boxes) == 0:
            continue
        corners = box_corners(np.asarray(group_boxes)[:, :7])[:, :4, :2]
        for i, (c, name, b) in enumerate(zip(corners, names, group_boxes)):
            color = class_color(name) if is_pred else GT_COLOR
            poly = to_px(c).astype(np.int32)
            cv2.polylines(img, [poly], True, color, 2 if is_pred else 1, cv2.LINE_AA)
            head = to_px(np.array([b[0] + np.cos(b[6]) * b[3] / 2, b[1] + np.sin(b[6]) * b[3] / 2]))
            centre = to_px(np.array(b[:2]))
            cv2.line(img, tuple(int(v) for v in centre), tuple(int(v) for v in head), color, 1, cv2.LINE_AA)
            if is_pred and scores is not None:
                x0, y0 = poly.max(0)
                _text(img, f"{float(scores[i]):.2f}", (int(x0) + 2, int(y0)), color, 0.35)
    cv2.drawMarker(img, (size // 2, size // 2), (255, 255, 255), cv2.MARKER_TRIANGLE_UP, 12, 2)
    _axes(img, half_range, scale)
    _legend(img)
    return img


def _axes(img: np.ndarray, half_range: float, scale: float) -> None:
    """Ticks every 10 m on the borders (x on the left border, y on the bottom), a 10 m scale bar."""
    size = img.shape[0]
    for m in range(-int(half_range) // 10 * 10, int(half_range) + 1, 10):
        p = int(size / 2 - m * scale)
        cv2.line(img, (0, p), (6, p), (160, 160, 160), 1)             # x (forward) ticks, left border
        cv2.line(img, (p, size - 1), (p, size - 7), (160, 160, 160), 1)  # y (left) ticks, bottom border
        if m % 20 == 0 and m:
            _text(img, f"x {m}", (9, p + 4), (160, 160, 160), 0.33)
            _text(img, f"y {m}", (p - 12, size - 10), (160, 160, 160), 0.33)
    bar = int(10 * scale)
    cv2.line(img, (size - 20 - bar, size - 26), (size - 20, size - 26), (230, 230, 230), 2)
    _text(img, "10 m", (size - 20 - bar, size - 32), (230, 230, 230), 0.4)
    _text(img, "LiDAR frame: x forward (up), y left", (10, size - 26), (160, 160, 160), 0.35)


def _legend(img: np.ndarray) -> None:
    """Top-left panel: GT in white, each class in its colour, 'predictions: class colour + score'."""
    rows = [("ground truth", GT_COLOR, 1)] + [(name.replace("_", " "), c, 2) for name, c in CLASS_COLORS.items()]
    x, y, step = 8, 8, 15
    panel = img[y:y + step * (len(rows) + 1) + 6, x:x + 196]
    panel[:] = (panel * 0.35).astype(np.uint8)
    for k, (label, color, width) in enumerate(rows):
        yy = y + 14 + k * step
        cv2.line(img, (x + 6, yy - 4), (x + 26, yy - 4), color, width)
        _text(img, label, (x + 32, yy), color if width == 2 else GT_COLOR, 0.38)
    _text(img, "predictions: class colour + score", (x + 6, y + 14 + len(rows) * step), (200, 200, 200), 0.35)


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


def draw_boxes(img: np.ndarray, lidar2img: np.ndarray, boxes: list[tuple],
               title: str = "") -> np.ndarray:
    """Copy of ``img`` (H, W, 3 RGB) with box groups projected by ``lidar2img``; GT white,
    predictions by class; ``title`` written top left."""
    out = img.copy()
    for group in boxes:                        # (boxes, names, is_prediction[, scores])
        group, names, is_pred = group[:3]
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


def draw_camera(img: np.ndarray, cam: Camera, boxes: list[tuple]) -> np.ndarray:
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
