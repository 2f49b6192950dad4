"""Box encoding for the regression head and NMS-free top-k decoding.

Boxes (LiDAR frame): ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` (z = gravity centre, dx
along the heading), the same convention as ``aqr_perception.ros.detection_msgs``.
Regression code (10 values, CMT's order): ``[x, y, z, log dx, log dy, log dz,
sin yaw, cos yaw, vx, vy]`` with x, y, z in metres (the head turns its
inverse-sigmoid offsets into metres before this code is used).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def encode_boxes(boxes: Tensor) -> Tensor:
    """(..., 9) boxes -> (..., 10) regression targets."""
    return torch.cat([boxes[..., :3], boxes[..., 3:6].clamp(min=1e-3).log(), boxes[..., 6:7].sin(),
                      boxes[..., 6:7].cos(), boxes[..., 7:9]], dim=-1)


def decode_boxes(code: Tensor) -> Tensor:
    """(..., 10) regression code -> (..., 9) boxes (yaw in (-pi, pi])."""
    yaw = torch.atan2(code[..., 6:7], code[..., 7:8])
    return torch.cat([code[..., :3], code[..., 3:6].exp(), yaw, code[..., 8:10]], dim=-1)


@dataclass
class Detections:
    """Decoded detections of one sample (N <= topk).

    boxes (N, 9), scores (N,), labels (N,) long, query_index (N,) long.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    query_index: Tensor


def topk_candidates(cls_logits: Tensor, bbox_code: Tensor, topk: int, score_threshold: float,
                    post_center_range: list[float]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The top-k of one sample before the filters, and which of them pass (no host read).

    Args:
        cls_logits: (Q, num_classes) raw logits; bbox_code: (Q, 10).
    Returns boxes (K, 9), scores (K,), labels (K,) long, query (K,) long and keep (K,) bool,
    K = min(topk, Q * num_classes): the top-k of all Q*num_classes sigmoid scores (a query
    may yield several classes); ``keep`` marks centres inside ``post_center_range`` with
    scores >= threshold.
    """
    q, ncls = cls_logits.shape
    scores, idx = cls_logits.sigmoid().reshape(-1).topk(min(topk, q * ncls))
    labels, query = idx % ncls, torch.div(idx, ncls, rounding_mode="floor")
    boxes = decode_boxes(bbox_code[query])
    keep = scores >= score_threshold
    for j in range(3):       # against Python numbers: a range tensor would be a blocking host-to-device copy
        keep &= (boxes[:, j] >= post_center_range[j]) & (boxes[:, j] <= post_center_range[j + 3])
    return boxes, scores, labels, query, keep


def topk_decode(cls_logits: Tensor, bbox_code: Tensor, topk: int, score_threshold: float,
                post_center_range: list[float]) -> Detections:
    """NMS-free decoding of one sample's last-layer outputs: :func:`topk_candidates`, filtered.

    Args:
        cls_logits: (Q, num_classes) raw logits; bbox_code: (Q, 10).
    """
    boxes, scores, labels, query, keep = topk_candidates(cls_logits, bbox_code, topk, score_threshold,
                                                         post_center_range)
    return Detections(boxes[keep], scores[keep], labels[keep], query[keep])
