"""Global BEV augmentation (CMT's ``GlobalRotScaleTransImage`` + ``RandomFlip3D``).

Per sample one 4x4 transform ``A = F @ [s R_z(theta) | 0]`` (random yaw rotation, uniform
scale, optional mirror of y and/or x) is applied to the whole LiDAR-frame scene: point
xyz, GT box centres, extents, headings and velocities. The images are not touched: the
cameras see the same pixels, and ``lidar2img <- lidar2img @ A^-1`` keeps every augmented
3D point projecting onto the pixel the original point projected to (so the image branch,
its position encoding and the AQR camera windows stay consistent with the BEV).

Boxes leaving the point-cloud range are dropped (mmdet3d's ``ObjectRangeFilter``); points
outside it are dropped by the voxelizer as usual.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from aqr_perception.model.detector import DetectorInputs


def sample_transform(max_rotation: float, scale_range: tuple[float, float], flip_p: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """One random (4, 4) float64 transform: rotation in [-max_rotation, max_rotation] rad about
    +z, scale in ``scale_range``, y -> -y with ``flip_p`` and x -> -x with ``flip_p``."""
    u = torch.rand(4, generator=generator, dtype=torch.float64)
    theta = (2 * float(u[0]) - 1) * max_rotation
    scale = scale_range[0] + float(u[1]) * (scale_range[1] - scale_range[0])
    c, s = math.cos(theta), math.sin(theta)
    A = torch.eye(4, dtype=torch.float64)
    A[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    A[:3, :3] *= scale
    flip = torch.ones(4, dtype=torch.float64)
    flip[1] = -1.0 if float(u[2]) < flip_p else 1.0     # horizontal BEV flip (mirror y)
    flip[0] = -1.0 if float(u[3]) < flip_p else 1.0     # vertical BEV flip (mirror x)
    return flip[:, None] * A


def augment_boxes(boxes: Tensor, A: Tensor) -> Tensor:
    """(N, 9) boxes ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` through ``A`` (rotation about z,
    uniform scale, mirrors). A mirrored box keeps its extents; its heading is the image of
    the old heading vector."""
    M = A[:3, :3].to(boxes)
    scale = torch.linalg.det(M).abs() ** (1.0 / 3.0)
    out = boxes.clone()
    out[:, :3] = boxes[:, :3] @ M.T + A[:3, 3].to(boxes)
    out[:, 3:6] = boxes[:, 3:6] * scale
    heading = torch.stack([boxes[:, 6].cos(), boxes[:, 6].sin()], -1) @ M[:2, :2].T
    out[:, 6] = torch.atan2(heading[:, 1], heading[:, 0])
    out[:, 7:9] = boxes[:, 7:9] @ M[:2, :2].T
    return out


def in_range(boxes: Tensor, pc_range: list[float]) -> Tensor:
    """(N,) bool: box centre inside ``[xmin, ymin, zmin, xmax, ymax, zmax]``."""
    r = torch.tensor(pc_range, dtype=boxes.dtype, device=boxes.device)
    return ((boxes[:, :3] >= r[:3]) & (boxes[:, :3] <= r[3:])).all(-1)


def augment_scene(inputs: DetectorInputs, gt_boxes: list[Tensor], gt_labels: list[Tensor], transforms: list[Tensor],
                  pc_range: list[float]) -> tuple[DetectorInputs, list[Tensor], list[Tensor]]:
    """Apply one (4, 4) transform per sample to points, lidar2img and GT (boxes (N, 9), labels (N,))."""
    points, l2i, boxes_out, labels_out = [], inputs.lidar2img.clone(), [], []
    for b, A in enumerate(transforms):
        p = inputs.points[b].clone()
        M = A.to(p)
        p[:, :3] = p[:, :3] @ M[:3, :3].T + M[:3, 3]
        points.append(p)
        l2i[b] = (inputs.lidar2img[b].double() @ torch.linalg.inv(A).to(l2i.device)).to(l2i.dtype)
        boxes = augment_boxes(gt_boxes[b], A)
        keep = in_range(boxes, pc_range)
        boxes_out.append(boxes[keep])
        labels_out.append(gt_labels[b][keep])
    return (DetectorInputs(points, inputs.images, l2i, inputs.camera_valid, inputs.lidar_valid),
            boxes_out, labels_out)


def random_augment(inputs: DetectorInputs, gt_boxes: list[Tensor], gt_labels: list[Tensor], max_rotation: float,
                   scale_range: tuple[float, float], flip_p: float, pc_range: list[float],
                   generator: torch.Generator | None = None) -> tuple[DetectorInputs, list[Tensor], list[Tensor]]:
    """:func:`augment_scene` with a fresh :func:`sample_transform` per sample. With identity
    settings (no rotation, scale 1, no flips) nothing is drawn from ``generator``, so the
    masked-modal draws that share it are those of a run without augmentation."""
    if max_rotation == 0.0 and tuple(scale_range) == (1.0, 1.0) and flip_p == 0.0:
        return inputs, gt_boxes, gt_labels
    transforms = [sample_transform(max_rotation, scale_range, flip_p, generator) for _ in range(inputs.batch_size)]
    return augment_scene(inputs, gt_boxes, gt_labels, transforms, pc_range)
