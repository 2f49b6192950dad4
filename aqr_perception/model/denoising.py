"""Query denoising (DN) for training, as in CMT.

Ground-truth boxes are copied into ``groups`` groups of noisy queries prepended to the
matching queries. Each noisy reference point is the GT centre shifted uniformly within
half the box size (times ``box_noise_scale``); a copy whose normalised noise vector is
longer than ``split`` gets the "no object" label. The self-attention mask keeps the
matching queries from seeing DN queries and DN groups from seeing each other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aqr_perception.config import DenoiseConfig


@dataclass
class DenoisingGroups:
    """DN bookkeeping of one batch.

    pad_size: number of DN queries in front of the matching queries (groups * single_pad)
    batch_index, query_index: (M,) where each DN target sits
    labels: (M,) long, class or num_classes ("no object")
    boxes: (M, 9) clean GT boxes (regression targets)
    """

    pad_size: int
    single_pad: int
    groups: int
    batch_index: Tensor
    query_index: Tensor
    labels: Tensor
    boxes: Tensor


def self_attention_mask(pad_size: int, single_pad: int, groups: int, num_queries: int,
                        device=None) -> Tensor:
    """(T, T) bool, True = may not attend; T = pad_size + num_queries."""
    total = pad_size + num_queries
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[pad_size:, :pad_size] = True                     # matching queries never see DN queries
    for g in range(groups):
        lo, hi = g * single_pad, (g + 1) * single_pad
        mask[lo:hi, :lo] = True                           # nor a group the other groups
        mask[lo:hi, hi:pad_size] = True
    return mask


def make_denoising_queries(gt_boxes: list[Tensor], gt_labels: list[Tensor], reference: Tensor,
                           cfg: DenoiseConfig, num_classes: int, pc_range: list[float],
                           generator: torch.Generator | None = None
                           ) -> tuple[Tensor, Tensor | None, DenoisingGroups | None]:
    """Build DN queries for a batch.

    Args:
        gt_boxes: B tensors (N_i, 9); gt_labels: B tensors (N_i,).
        reference: (Q, 3) learned reference points in [0, 1].
    Returns:
        reference points (B, pad + Q, 3), self-attention mask (or None) and the groups
        (None when DN is off or the batch has no GT).
    """
    batch = len(gt_boxes)
    q = reference.shape[0]
    counts = [int(b.shape[0]) for b in gt_boxes]
    if not cfg.enabled or max(counts, default=0) == 0:
        return reference[None].expand(batch, -1, -1), None, None
    device = reference.device
    single_pad = max(counts)
    groups = max(1, min(cfg.max_groups, q // single_pad))
    boxes = torch.cat(gt_boxes).to(device)
    labels = torch.cat(gt_labels).to(device).long()
    bidx = torch.cat([torch.full((n,), i, device=device, dtype=torch.long) for i, n in enumerate(counts)])
    within = torch.cat([torch.arange(n, device=device) for n in counts])
    boxes_g = boxes.repeat(groups, 1)
    labels_g = labels.repeat(groups)
    bidx_g = bidx.repeat(groups)
    qidx_g = torch.cat([within + g * single_pad for g in range(groups)])

    centre = boxes_g[:, :3].clone()
    noise = torch.rand(centre.shape, generator=generator, device=device) * 2 - 1
    centre = centre + noise * (boxes_g[:, 3:6] / 2) * cfg.box_noise_scale
    lo = centre.new_tensor(pc_range[:3])
    hi = centre.new_tensor(pc_range[3:])
    centre = ((centre - lo) / (hi - lo)).clamp(0, 1)
    labels_g = labels_g.masked_fill(noise.norm(dim=1) > cfg.split, num_classes)

    pad_size = single_pad * groups
    ref = torch.cat([reference.new_zeros(pad_size, 3), reference], 0)[None].repeat(batch, 1, 1)
    ref[bidx_g, qidx_g] = centre.to(ref.dtype)
    mask = self_attention_mask(pad_size, single_pad, groups, q, device)
    return ref, mask, DenoisingGroups(pad_size, single_pad, groups, bidx_g, qidx_g, labels_g, boxes_g)
