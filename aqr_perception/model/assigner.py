"""Hungarian matching of queries to ground truth (CMT's HungarianAssigner3D, scipy).

cost = match_cls_weight * focal cost + match_bbox_weight * L1 over the first 8 code
values (x, y, z, log sizes, sin, cos; velocity excluded).
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from aqr_perception.config import LossConfig
from aqr_perception.model.box_coder import encode_boxes

MATCH_CODE_DIMS = 8
EPS = 1e-12


def focal_cost(cls_logits: Tensor, gt_labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """(Q, ncls) logits, (N,) labels -> (Q, N) focal classification cost."""
    p = cls_logits.sigmoid()
    neg = -(1 - p + EPS).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + EPS).log() * alpha * (1 - p).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


@torch.no_grad()
def hungarian_match(cls_logits: Tensor, bbox_code: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                    cfg: LossConfig) -> tuple[Tensor, Tensor]:
    """Match one sample's queries to its GT.

    Args:
        cls_logits (Q, ncls), bbox_code (Q, 10) predictions; gt_boxes (N, 9), gt_labels (N,).
    Returns:
        (query_index, gt_index), each (min(Q, N),) long, pairs of the optimal assignment.
    """
    if gt_boxes.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cls_logits.device)
        return empty, empty
    cost = cfg.match_cls_weight * focal_cost(cls_logits.float(), gt_labels, cfg.focal_alpha, cfg.focal_gamma)
    target = encode_boxes(gt_boxes.float())[:, :MATCH_CODE_DIMS]
    cost = cost + cfg.match_bbox_weight * torch.cdist(bbox_code[:, :MATCH_CODE_DIMS].float(), target, p=1)
    cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    dev = cls_logits.device
    return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, dtype=torch.long, device=dev)
