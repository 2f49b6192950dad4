"""mmdet3d's SparseEncoder (``block_type="basicblock"``) on spconv 2: voxels -> BEV map.

The published CMT voxel model's LiDAR middle encoder. Module names follow mmdet3d
(``conv_input.{0,1}``, ``encoder_layers.encoder_layer{i}.{j}.{conv1,bn1,conv2,bn2}``
for a residual block, ``.{j}.{0,1}`` for a strided conv, ``conv_out.{0,1}``), so the
official state_dict maps onto it key for key; only the sparse-conv weights change
layout (spconv 1's ``(kD, kH, kW, Cin, Cout)`` -> spconv 2's ``(Cout, kD, kH, kW, Cin)``,
:mod:`aqr_perception.model.cmt_import`).

Frames: voxel coordinates ``[batch, z, y, x]`` on the sparse grid ``(D, H, W)`` =
(z, y, x) cells, D one more than the voxel grid's z cells as in mmdet3d. Output:
``(B, C_out * D_out, H / 8, W / 8)``, channel index ``c * D_out + d`` (mmdet3d's
``dense().view(N, C * D, H, W)``), rows = y cells, columns = x cells.

This module imports spconv; :class:`aqr_perception.model.lidar.LidarBranch` imports it
only for a voxel model, so a pillar model never needs spconv.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from aqr_perception.config import SparseEncoderConfig

try:
    import spconv.pytorch as sp
except ImportError as exc:  # the CPU wheel is in requirements.txt; CUDA machines use spconv-cu12x
    raise ImportError("model.lidar.encoder 'voxel' needs spconv (pip install spconv, or spconv-cu12x on a "
                      f"CUDA machine): {exc}") from None

BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # mmdet3d's BN1d for the sparse layers (CMT's config)


def _conv_module(cin: int, cout: int, kernel, stride, padding, indice_key: str, subm: bool) -> sp.SparseSequential:
    """mmdet3d's ``make_sparse_convmodule``: sparse conv (no bias) + BN1d + ReLU as ``.0/.1/.2``."""
    conv = (sp.SubMConv3d(cin, cout, kernel, stride, padding, bias=False, indice_key=indice_key) if subm else
            sp.SparseConv3d(cin, cout, kernel, stride, padding, bias=False, indice_key=indice_key))
    return sp.SparseSequential(conv, nn.BatchNorm1d(cout, eps=BN_EPS, momentum=BN_MOMENTUM), nn.ReLU(inplace=True))


@contextlib.contextmanager
def _one_cpu_thread(on_cuda: bool) -> Iterator[None]:
    """spconv 2.3.8's CPU convolutions give wrong sums when torch runs more than one
    intra-op thread (11 of 12 random 3x3x3 SubMConv3d cases off by ~0.1 against dense
    conv3d at 2 threads, none at 1: test/test_voxel_encoder.py), so on CPU the encoder
    runs at one thread. CUDA is not affected."""
    if on_cuda or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SparseBasicBlock(sp.SparseModule):
    """Residual block of two 3x3x3 submanifold convs (mmdet3d's SparseBasicBlock)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = sp.SubMConv3d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.conv2 = sp.SubMConv3d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: sp.SparseConvTensor) -> sp.SparseConvTensor:
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(self.bn1(out.features).relu())
        out = self.conv2(out)
        return out.replace_feature((self.bn2(out.features) + identity).relu())


class SparseEncoder(nn.Module):
    """Voxel features (P, F) at ``[b, z, y, x]`` -> BEV features (B, C_out * D_out, H/8, W/8).

    Per stage i: the residual blocks of ``encoder_channels[i]``, the last entry of every
    stage but the last being a stride-2 3x3x3 sparse conv with ``encoder_paddings[i]``;
    then ``conv_out`` (kernel (3, 1, 1), stride (2, 1, 1)) halves z once more.
    """

    def __init__(self, in_channels: int, sparse_shape: list[int], cfg: SparseEncoderConfig) -> None:
        super().__init__()
        self.sparse_shape = list(sparse_shape)
        self.conv_input = _conv_module(in_channels, cfg.base_channels, 3, 1, 1, "subm1", subm=True)
        stages, cin = [], cfg.base_channels
        last = len(cfg.encoder_channels) - 1
        for i, (channels, paddings) in enumerate(zip(cfg.encoder_channels, cfg.encoder_paddings)):
            blocks = []
            for j, (cout, pad) in enumerate(zip(channels, paddings)):
                if j == len(channels) - 1 and i != last:
                    blocks.append(_conv_module(cin, cout, 3, 2, pad, f"spconv{i + 1}", subm=False))
                else:
                    blocks.append(SparseBasicBlock(cout))
                cin = cout
            stages.append((f"encoder_layer{i + 1}", sp.SparseSequential(*blocks)))
        self.encoder_layers = sp.SparseSequential()
        for name, stage in stages:
            self.encoder_layers.add_module(name, stage)
        self.conv_out = _conv_module(cin, cfg.output_channels, (3, 1, 1), (2, 1, 1), 0, "spconv_down2",
                                     subm=False)

    def forward(self, features: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        x = sp.SparseConvTensor(features, coords.int(), self.sparse_shape, batch_size)
        with _one_cpu_thread(features.is_cuda):
            x = self.conv_out(self.encoder_layers(self.conv_input(x)))
        dense = x.dense()                                   # (B, C, D, H, W)
        b, c, d, h, w = dense.shape
        return dense.reshape(b, c * d, h, w)


def check_spconv_device(device: torch.device) -> None:
    """Raise ``RuntimeError`` with the fix when this spconv build cannot run on ``device``
    (the CPU wheel from PyPI has no CUDA kernels: a voxel model on CUDA needs spconv-cu12x)."""
    if device.type != "cuda":
        return
    try:
        conv = sp.SubMConv3d(1, 1, 3, bias=False).to(device)
        conv(sp.SparseConvTensor(torch.ones(1, 1, device=device), torch.zeros(1, 4, dtype=torch.int32, device=device),
                                 [3, 3, 3], 1))
    except Exception as exc:
        raise RuntimeError(f"this spconv cannot run on {device} ({type(exc).__name__}: {str(exc)[:120]}): the "
                           "voxel LiDAR branch on CUDA needs the CUDA build (pip uninstall spconv; pip install "
                           "spconv-cu126, or the wheel of your CUDA)") from None
