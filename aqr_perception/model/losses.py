"""CMT's training losses: sigmoid focal classification + weighted L1 regression on every
decoder layer, for the matching queries (after Hungarian matching) and the DN queries.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn import functional as F

from aqr_perception.config import ModelConfig
from aqr_perception.model.assigner import hungarian_match
from aqr_perception.model.box_coder import encode_boxes
from aqr_perception.model.detector import DetectorOutput


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Element-wise focal loss (RetinaNet), same shape as ``logits``; targets in {0, 1}."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t).pow(gamma) * ce


def one_hot_targets(labels: Tensor, num_classes: int) -> Tensor:
    """(N,) labels with ``num_classes`` meaning no object -> (N, num_classes) float."""
    return F.one_hot(labels, num_classes + 1)[:, :num_classes].float()


@dataclass
class LossBreakdown:
    """Scalar total plus named parts (``layer{i}.cls``, ``layer{i}.bbox``, ``layer{i}.dn_cls`` ...)."""

    total: Tensor
    parts: dict[str, float] = field(default_factory=dict)


def _layer_losses(cls_logits: Tensor, bbox_code: Tensor, labels: Tensor, targets: Tensor, box_mask: Tensor,
                  cfg: ModelConfig, cls_norm: float, box_norm: float) -> tuple[Tensor, Tensor]:
    """Focal over all rows, L1 over rows in ``box_mask``. Shapes: (R, ncls), (R, 10), (R,), (R, 10), (R,)."""
    lc = cfg.loss
    ncls = len(cfg.classes)
    cls = sigmoid_focal_loss(cls_logits, one_hot_targets(labels, ncls), lc.focal_alpha, lc.focal_gamma).sum()
    weights = bbox_code.new_tensor(lc.code_weights)
    finite = torch.isfinite(targets).all(dim=1) & box_mask
    l1 = ((bbox_code[finite] - targets[finite]).abs() * weights).sum()
    return lc.cls_weight * cls / cls_norm, lc.bbox_weight * l1 / box_norm


def detection_loss(out: DetectorOutput, gt_boxes: list[Tensor], gt_labels: list[Tensor],
                   cfg: ModelConfig) -> LossBreakdown:
    """Sum of per-layer losses (matching + DN) over the batch.

    Each layer is matched independently (as in CMT). Normalisers: the number of GT boxes
    in the batch (>= 1); DN classification uses CMT's expected positive count
    ``M * pi/6 * split^3``.
    """
    ncls = len(cfg.classes)
    num_layers, batch, q, _ = out.cls_logits.shape
    num_gt = max(1, sum(int(g.shape[0]) for g in gt_boxes))
    total = out.cls_logits.new_zeros(())
    parts: dict[str, float] = {}
    for layer in range(num_layers):
        rows_cls, rows_box, labels, targets, mask = [], [], [], [], []
        for b in range(batch):
            logits, code = out.cls_logits[layer, b], out.bbox_code[layer, b]
            qi, gi = hungarian_match(logits.detach(), code.detach(), gt_boxes[b], gt_labels[b], cfg.loss)
            lab = torch.full((q,), ncls, dtype=torch.long, device=logits.device)
            lab[qi] = gt_labels[b][gi].to(logits.device).long()
            tgt = code.new_zeros(q, code.shape[-1])
            tgt[qi] = encode_boxes(gt_boxes[b][gi].to(code))
            m = torch.zeros(q, dtype=torch.bool, device=logits.device)
            m[qi] = True
            rows_cls.append(logits)
            rows_box.append(code)
            labels.append(lab)
            targets.append(tgt)
            mask.append(m)
        cls, box = _layer_losses(torch.cat(rows_cls), torch.cat(rows_box), torch.cat(labels), torch.cat(targets),
                                 torch.cat(mask), cfg, num_gt, num_gt)
        total = total + cls + box
        parts[f"layer{layer}.cls"], parts[f"layer{layer}.bbox"] = float(cls.detach()), float(box.detach())
        if out.dn is not None and out.dn_cls_logits is not None:
            dn = out.dn
            logits = out.dn_cls_logits[layer][dn.batch_index, dn.query_index]
            code = out.dn_bbox_code[layer][dn.batch_index, dn.query_index]
            m = dn.labels.shape[0]
            cls_norm = max(1.0, m * 3.14159 / 6 * cfg.denoise.split ** 3)
            cls, box = _layer_losses(logits, code, dn.labels, encode_boxes(dn.boxes.to(code)),
                                     torch.ones(m, dtype=torch.bool, device=code.device), cfg, cls_norm, max(1, m))
            total = total + cls + box
            parts[f"layer{layer}.dn_cls"], parts[f"layer{layer}.dn_bbox"] = float(cls.detach()), float(box.detach())
    return LossBreakdown(total, parts)
