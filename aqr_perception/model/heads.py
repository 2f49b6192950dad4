"""CMT's separate task heads: center, height, dim, rot, vel, cls.

Each branch is Linear(C->64) + LayerNorm + ReLU + Linear(64->out), i.e. CMT's
Conv1d(k=1) + LN + ReLU + Conv1d(k=1) applied per query. Either one set of branches
serves every decoder layer (``per_layer`` False, this project's models), or every layer
has its own (``per_layer`` True: CMT's grouped Conv1d with one group per layer and its
GroupLayerNorm, the published weights' layout). Centre and height are offsets in
inverse-sigmoid space added to the (normalised) reference point, then mapped to metres
over ``point_cloud_range``.

The published CMT weights read their ten output slots as ``(cx, cy, log dx, log dy, cz,
log dz, sin, cos, vx, vy)`` although the branches are named center(2), height(1),
dim(3): the "height" branch, squashed into the z range, carries log dx and dim[1] the
centre z (CMT issues #71 and #103). ``cmt_slots`` reproduces that reading, so that
model's boxes come out right; the box code returned is always this project's.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aqr_perception.config import HeadConfig

HEAD_CHANNELS = 64
BRANCHES = {"center": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
CLS_BIAS_INIT = -2.19  # sigmoid(-2.19) = 0.1 prior, as in CMT
#: CMT's slots (cx, cy, <height branch>, dim0, dim1, dim2, ...) -> our code (x, y, z, log dx, log dy, log dz, ...)
CMT_SLOTS_TO_CODE = [0, 1, 4, 2, 3, 5, 6, 7, 8, 9]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class GroupedLinear(nn.Module):
    """One Linear per decoder layer: (L, B, Q, in) -> (L, B, Q, out).

    CMT's ``Conv1d(L * in, L * out, 1, groups=L)`` over the layers' features stacked as
    channel blocks; weight (L, out, in), bias (L, out).
    """

    def __init__(self, layers: int, cin: int, cout: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(layers, cout, cin))
        self.bias = nn.Parameter(torch.zeros(layers, cout)) if bias else None
        bound = cin ** -0.5                       # nn.Linear's default init, per layer
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("lbqi,loi->lbqo", x, self.weight)
        return y if self.bias is None else y + self.bias[:, None, None, :]


class GroupLayerNorm(nn.Module):
    """LayerNorm over the channels with a separate affine per decoder layer: (L, B, Q, C).

    CMT's GroupLayerNorm1d (biased variance, eps inside the root); weight/bias (L, C).
    """

    def __init__(self, layers: int, channels: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(layers, channels))
        self.bias = nn.Parameter(torch.zeros(layers, channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return y * self.weight[:, None, None, :] + self.bias[:, None, None, :]


def _branch(embed_dims: int, out: int, layers: int | None, eps: float) -> nn.Sequential:
    if layers is None:
        return nn.Sequential(nn.Linear(embed_dims, HEAD_CHANNELS), nn.LayerNorm(HEAD_CHANNELS),
                             nn.ReLU(inplace=True), nn.Linear(HEAD_CHANNELS, out))
    return nn.Sequential(GroupedLinear(layers, embed_dims, HEAD_CHANNELS, bias=False),
                         GroupLayerNorm(layers, HEAD_CHANNELS, eps), nn.ReLU(inplace=True),
                         GroupedLinear(layers, HEAD_CHANNELS, out, bias=True))


class TaskHeads(nn.Module):
    """Decoder outputs (L, B, Q, C) + reference points (B, Q, 3) -> logits and box codes.

    Returns cls_logits (L, B, Q, num_classes) and bbox_code (L, B, Q, 10) in the box
    coder's layout with centre and height in metres.
    """

    def __init__(self, embed_dims: int, num_classes: int, pc_range: list[float], num_layers: int,
                 cfg: HeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or HeadConfig()
        layers = num_layers if cfg.per_layer else None
        self.branches = nn.ModuleDict({k: _branch(embed_dims, n, layers, cfg.norm_eps) for k, n in BRANCHES.items()})
        self.cls = _branch(embed_dims, num_classes, layers, cfg.norm_eps)
        nn.init.constant_(self.cls[-1].bias, CLS_BIAS_INIT)
        self.cmt_slots = cfg.cmt_slots
        self.register_buffer("pc_range", torch.tensor(pc_range, dtype=torch.float32), persistent=False)

    def forward(self, feats: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        out = {k: b(feats) for k, b in self.branches.items()}
        ref = inverse_sigmoid(reference)[None]                       # (1, B, Q, 3)
        xyz = torch.cat([out["center"] + ref[..., :2], out["height"] + ref[..., 2:3]], dim=-1).sigmoid()
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        xyz = xyz * (hi - lo) + lo
        code = torch.cat([xyz, out["dim"], out["rot"], out["vel"]], dim=-1)
        if self.cmt_slots:
            code = code[..., CMT_SLOTS_TO_CODE]
        return self.cls(feats), code
