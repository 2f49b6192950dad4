"""CMT's separate task heads: center, height, dim, rot, vel, cls (shared by all layers).

Each branch is Linear(C->64) + LayerNorm + ReLU + Linear(64->out), i.e. CMT's
Conv1d(k=1) + LN + ReLU + Conv1d(k=1) applied per query. Centre and height are offsets
in inverse-sigmoid space added to the (normalised) reference point, then mapped to
metres over ``point_cloud_range``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

HEAD_CHANNELS = 64
BRANCHES = {"center": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
CLS_BIAS_INIT = -2.19  # sigmoid(-2.19) = 0.1 prior, as in CMT


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _branch(embed_dims: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dims, HEAD_CHANNELS), nn.LayerNorm(HEAD_CHANNELS), nn.ReLU(inplace=True),
                         nn.Linear(HEAD_CHANNELS, out))


class TaskHeads(nn.Module):
    """Decoder outputs (L, B, Q, C) + reference points (B, Q, 3) -> logits and box codes.

    Returns cls_logits (L, B, Q, num_classes) and bbox_code (L, B, Q, 10) in the box
    coder's layout with centre and height in metres.
    """

    def __init__(self, embed_dims: int, num_classes: int, pc_range: list[float]) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({k: _branch(embed_dims, n) for k, n in BRANCHES.items()})
        self.cls = _branch(embed_dims, num_classes)
        nn.init.constant_(self.cls[-1].bias, CLS_BIAS_INIT)
        self.register_buffer("pc_range", torch.tensor(pc_range, dtype=torch.float32), persistent=False)

    def forward(self, feats: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        out = {k: b(feats) for k, b in self.branches.items()}
        ref = inverse_sigmoid(reference)[None]                       # (1, B, Q, 3)
        xyz = torch.cat([out["center"] + ref[..., :2], out["height"] + ref[..., 2:3]], dim=-1).sigmoid()
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        xyz = xyz * (hi - lo) + lo
        code = torch.cat([xyz, out["dim"], out["rot"], out["vel"]], dim=-1)
        return self.cls(feats), code
