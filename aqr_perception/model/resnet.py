"""ResNet-18/34/50 image backbone and the CMT image neck (FPN to the stride-16 level).

Parameter names follow the common (torchvision) ResNet layout -- ``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ... -- so standard ImageNet weights load
with ``load_state_dict(strict=False)`` (the classifier ``fc`` is absent).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (same buffer names as BN)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        state_dict.pop(prefix + "num_batches_tracked", None)  # present in BN checkpoints
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _norm(frozen: bool):
    return FrozenBatchNorm2d if frozen else nn.BatchNorm2d


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on 3x3 (ResNet v1.5)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


_LAYOUT = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """ResNet trunk returning C4 (stride 16) and C5 (stride 32).

    Input:  (N, 3, H, W) normalised images.
    Output: [C4 (N, 4*w*e, H/16, W/16), C5 (N, 8*w*e, H/32, W/32)], w = base_width,
            e = block expansion (1 for 18/34, 4 for 50).
    """

    def __init__(self, depth: int = 50, base_width: int = 64, frozen_bn: bool = True) -> None:
        super().__init__()
        block, counts = _LAYOUT[depth]
        norm = _norm(frozen_bn)
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = norm(base_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, base_width, counts[0], 1, norm)
        self.layer2 = self._make_layer(block, base_width * 2, counts[1], 2, norm)
        self.layer3 = self._make_layer(block, base_width * 4, counts[2], 2, norm)
        self.layer4 = self._make_layer(block, base_width * 8, counts[3], 2, norm)
        self.out_channels = (base_width * 4 * block.expansion, base_width * 8 * block.expansion)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stem_pool(self, x: Tensor) -> Tensor:
        """The 3x3 / 2 max pool. PyTorch's CPU kernel is ~9x slower on NCHW than on
        channels-last tensors (tiny model, 6 x 32 x 96 x 176 fp32: 15.7 vs 1.8 ms), so on
        the CPU it pools a channels-last copy and hands back the input's memory format:
        the same values (a max of the same elements), convolutions after it unchanged."""
        if x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last):
            return self.maxpool(x)
        return self.maxpool(x.contiguous(memory_format=torch.channels_last)).contiguous()

    def _make_layer(self, block, planes: int, blocks: int, stride: int, norm) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       norm(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, norm)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        # relu(maxpool(.)) is maxpool(relu(.)) exactly (relu is monotonic, the pool pads with
        # -inf) on a quarter of the values: 2.7 -> 0.7 ms for the tiny model's 6 views in bf16
        x = F.relu(self._stem_pool(self.bn1(self.conv1(x))))
        c4 = self.layer3(self.layer2(self.layer1(x)))
        c5 = self.layer4(c4)
        return [c4, c5]


class ImageNeck(nn.Module):
    """FPN over (C4, C5) returning only the stride-16 level, as CMT's CPFPN does.

    Output: (N, out_channels, H/16, W/16).
    """

    def __init__(self, in_channels: tuple[int, int], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, padding=1)])

    def forward(self, feats: list[Tensor]) -> Tensor:
        c4, c5 = feats
        p5 = self.lateral_convs[1](c5)
        p4 = self.lateral_convs[0](c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        return self.fpn_convs[0](p4)
