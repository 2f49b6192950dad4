"""The detector's convolutional branches in bfloat16, channels-last (``runtime: torch_bf16``).

The image branch (backbone, neck) and the BEV convolutions (SECOND, FPN, shared conv) are
most of the tiny model's time on a CPU and take bf16 well; oneDNN runs bf16 convolutions
with the CPU's bf16 dot products (AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake and
Sapphire Rapids and later; AMX on the latter). On the 2-core dev machine (Zen 4): image
branch 75 -> 31 ms, BEV convolutions 18 -> 10 ms (BatchNorms folded into the convolutions
first: 38 -> 31 ms for the image branch, and closer to fp32). The normalisation before the backbone,
the pillar / voxel encoder, the position encodings (fp32 as mmdet's ``force_fp32`` keeps
them), the decoder and the heads stay in fp32: bf16 there was slower on this CPU, and the
attention logits are what a bf16 mantissa would hurt most. A CPU without native bf16 runs
it too (oneDNN emulates it), slower than fp32: :func:`native_bf16_cpu` tells. The
conversion is in place: afterwards the model runs through :class:`Bf16BranchDetector`
(``DetectorRuntime`` does), not through its own ``forward``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from aqr_perception.model.detector import CmtAqrDetector, DetectorInputs, DetectorOutput
from aqr_perception.model.resnet import FrozenBatchNorm2d

#: /proc/cpuinfo flags of native bf16 dot products: x86-64 ("flags" lines), aarch64 ("Features")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def native_bf16_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 dot-product instructions (False where unknown)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    flags = line.split(":", 1)[1].split() if ":" in line else []
    return any(f in flags for f in BF16_CPU_FLAGS)


def bf16_warning(device: torch.device) -> str | None:
    """Why bf16 will be slow here (emulated), or None."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{device} has no native bf16: emulated, slower"
    if device.type == "cpu" and not native_bf16_cpu():
        return "this CPU has no native bf16 (avx512_bf16, amx_bf16; aarch64 bf16): emulated, slower"
    return None


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d))


def _folded(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.Module) -> nn.Conv2d | nn.ConvTranspose2d:
    """A conv computing ``bn(conv(x))`` in eval mode (running statistics)."""
    transpose = isinstance(conv, nn.ConvTranspose2d)
    common = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                  padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    fused = (nn.ConvTranspose2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                output_padding=conv.output_padding, **common) if transpose else
             nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, **common))
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                        bn.bias, transpose=transpose)
    fused.weight.data.copy_(weight)
    fused.bias.data.copy_(bias)
    return fused


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a Conv2d or ConvTranspose2d into it, in
    place (inference): in an ``nn.Sequential`` (conv, bn) pairs (VoVNet's ConvNormAct,
    SECOND and its FPN deblocks, the downsample branches) and ``convN`` / ``bnN``
    attribute pairs (ResNet's stem and blocks, whose forward calls ``bnN(convN(x))``); the
    BN becomes an Identity. Returns the number folded.
    In bf16 this also keeps the normalisation's arithmetic in fp32 (folded once here)."""
    count = 0
    for child in module.children():
        count += fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if _is_conv(module[i]) and _is_batchnorm(module[i + 1]):
                module[i], module[i + 1] = _folded(module[i], module[i + 1]), nn.Identity()
                count += 1
    for i in range(1, 4):
        conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
        if conv is not None and _is_conv(conv) and bn is not None and _is_batchnorm(bn):
            setattr(module, f"conv{i}", _folded(conv, bn))
            setattr(module, f"bn{i}", nn.Identity())
            count += 1
    return count


def _bf16_channels_last(module: nn.Module) -> nn.Module:
    fold_batchnorm(module)
    return module.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


class Bf16BranchDetector:
    """Drop-in for ``CmtAqrDetector.__call__`` in inference: the model's image backbone,
    image neck and BEV convolutions are converted *in place*, their BatchNorms folded into
    the convolutions (in fp32) and then to bf16 channels-last (the fp32 copies are not
    kept: memory); their inputs are cast on the way in, their outputs
    come back as contiguous fp32, and everything else runs as in the eager model."""

    def __init__(self, model: CmtAqrDetector) -> None:
        if model.training:
            raise ValueError("the bf16 branches are for inference (model.eval())")
        self.model = model
        lidar = model.lidar
        for module in (model.img_backbone, model.img_neck, lidar.backbone, lidar.neck, lidar.shared_conv):
            _bf16_channels_last(module)

    def __call__(self, inputs: DetectorInputs) -> DetectorOutput:
        with torch.no_grad():
            return self.model.forward_with_branches(inputs, self._image, self._bev_dense)

    def _image(self, images: Tensor) -> Tensor:
        """(B, V, 3, H, W) RGB 0-255 -> (B*V, C, h, w) fp32; normalised in fp32 first."""
        m = self.model
        x = m.normalised_images(images.float()).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        return m.img_neck(m.img_backbone(x)).float().contiguous()

    def _bev_dense(self, canvas: Tensor) -> Tensor:
        """(B, C0, H, W) fp32 canvas -> (B, C, Hb, Wb) fp32."""
        x = canvas.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        return self.model.lidar.dense(x).float().contiguous()
