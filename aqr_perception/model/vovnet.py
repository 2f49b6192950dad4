"""VoVNet-eSE image backbone (the 1600x640 CMT model's VoVNet-99-eSE), returning C4 and C5.

One-shot aggregation (OSA): each block runs ``layer_per_block`` 3x3 conv+BN+ReLU layers
in a chain, concatenates the block input with every layer's output, reduces that with
a 1x1 conv+BN+ReLU, and gates it with effective squeeze-excitation (eSE: global average
pool, 1x1 conv with bias, hard sigmoid ``relu6(x + 3) / 6``, multiply). Every block of a
stage after the first adds its input back (identity). Stages 3-5 start with a 3x3/2
max pool (``ceil_mode``); the stem (three 3x3 convs, strides 2, 1, 2) gives stride 4,
so stage 2 is at stride 4 and stages 4 and 5 at 16 and 32.

Module names are our own (``stem.{0,1,2}``, ``stages.{s}.blocks.{b}.layers.{i}``,
``.concat``, ``.ese.fc``); :mod:`aqr_perception.model.cmt_import` maps the official
names (``stem.stem_1/conv``, ``stage2.OSA2_1.layers.0.OSA2_1_0/conv`` ...) onto them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aqr_perception.model.resnet import FrozenBatchNorm2d


@dataclass(frozen=True)
class VoVNetSpec:
    """Channel plan of a VoVNet variant (the official ``_STAGE_SPECS``)."""

    stem_channels: tuple[int, int, int]
    stage_channels: tuple[int, int, int, int]     # width of the 3x3 layers per stage
    stage_out_channels: tuple[int, int, int, int]  # output (concat 1x1) channels per stage
    layer_per_block: int
    block_per_stage: tuple[int, int, int, int]


VOVNET_SPECS = {
    "V-39-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 1, 2, 2)),
    "V-57-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 1, 4, 3)),
    "V-99-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 3, 9, 3)),
}


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm (frozen or not) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, frozen_bn: bool) -> None:
        norm = FrozenBatchNorm2d(cout) if frozen_bn else nn.BatchNorm2d(cout)
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = norm
        self.act = nn.ReLU(inplace=True)


class EffectiveSE(nn.Module):
    """eSE gate: ``x * hard_sigmoid(fc(mean_hw(x)))`` with ``hard_sigmoid = relu6(x + 3) / 6``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3), keepdim=True))
        return x * (F.relu6(gate + 3.0) / 6.0)


class OsaBlock(nn.Module):
    """(N, cin, H, W) -> (N, cout, H, W); ``identity`` adds the input (needs cin == cout)."""

    def __init__(self, cin: int, mid: int, cout: int, layers: int, identity: bool, frozen_bn: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ConvNormAct(cin if i == 0 else mid, mid, 3, 1, frozen_bn) for i in range(layers)])
        self.concat = ConvNormAct(cin + layers * mid, cout, 1, 1, frozen_bn)
        self.ese = EffectiveSE(cout)
        self.identity = identity

    def forward(self, x: Tensor) -> Tensor:
        outs = [x]
        y = x
        for layer in self.layers:
            y = layer(y)
            outs.append(y)
        y = self.ese(self.concat(torch.cat(outs, dim=1)))
        return y + x if self.identity else y


class OsaStage(nn.Module):
    """Optional 3x3/2 max pool, then ``blocks`` OSA blocks (identity on all but the first)."""

    def __init__(self, cin: int, mid: int, cout: int, blocks: int, layers: int, downsample: bool,
                 frozen_bn: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([OsaBlock(cin if b == 0 else cout, mid, cout, layers, b > 0, frozen_bn)
                                     for b in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        for block in self.blocks:
            x = block(x)
        return x


class VoVNet(nn.Module):
    """VoVNet-eSE trunk returning C4 (stride 16) and C5 (stride 32), like :class:`ResNet`.

    Input:  (N, 3, H, W) normalised images.
    Output: [C4 (N, stage_out[2], H/16, W/16), C5 (N, stage_out[3], H/32, W/32)]
            (768 and 1024 channels for V-99-eSE).
    """

    def __init__(self, spec: str = "V-99-eSE", frozen_bn: bool = True) -> None:
        super().__init__()
        s = VOVNET_SPECS[spec]
        c0, c1, c2 = s.stem_channels
        self.stem = nn.Sequential(ConvNormAct(3, c0, 3, 2, frozen_bn), ConvNormAct(c0, c1, 3, 1, frozen_bn),
                                  ConvNormAct(c1, c2, 3, 2, frozen_bn))
        ins = (c2, *s.stage_out_channels[:-1])
        self.stages = nn.ModuleList([
            OsaStage(cin, mid, cout, blocks, s.layer_per_block, i > 0, frozen_bn)
            for i, (cin, mid, cout, blocks) in enumerate(zip(ins, s.stage_channels, s.stage_out_channels,
                                                              s.block_per_stage))])
        self.out_channels = (s.stage_out_channels[2], s.stage_out_channels[3])
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        x = self.stages[1](self.stages[0](x))
        c4 = self.stages[2](x)
        return [c4, self.stages[3](c4)]
