"""The voxel LiDAR branch: hard voxelization against spconv's PointToVoxel, and the
spconv SparseEncoder against dense ``conv3d`` evaluated at the active sites."""
from __future__ import annotations

import pytest
import torch
from model_helpers import randomise_batchnorm
from spconv.pytorch.utils import PointToVoxel
from torch import nn
from torch.nn import functional as F

from aqr_perception.config import SparseEncoderConfig
from aqr_perception.model.sparse_encoder import SparseBasicBlock, SparseEncoder
from aqr_perception.model.voxel import HardVoxelizer

RANGE = [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
SIZE = [0.075, 0.075, 0.2]


def _cloud(n: int, seed: int, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([spread, spread, 12.0])  # some outside z
    feats = torch.rand(n, 2, generator=g) * torch.tensor([255.0, 0.45])
    return torch.cat([xyz, feats], dim=1)


@pytest.mark.parametrize("spread,max_voxels", [(4.0, 160000), (120.0, 160000), (0.3, 200)])
def test_hard_voxelizer_equals_spconv_point_to_voxel(spread, max_voxels):
    """Same voxels in the same order, same kept points (first 10 per voxel, first
    max_voxels voxels), the mean of the kept points as the feature; NaN and inf points dropped."""
    pts = _cloud(30000, seed=int(spread), spread=spread)
    pts[::997, 0] = float("nan")
    pts[::991, 1] = float("inf")
    pts[::983, 2] = float("-inf")
    ours = HardVoxelizer(RANGE, SIZE, 10, max_voxels)([pts])
    ref = PointToVoxel(vsize_xyz=SIZE, coors_range_xyz=RANGE, num_point_features=5, max_num_voxels=max_voxels,
                       max_num_points_per_voxel=10)
    vox, idx, num = ref(pts[torch.isfinite(pts).all(1)])
    assert ours.coords.shape[0] == idx.shape[0] > 0
    if max_voxels == 200:
        assert idx.shape[0] == max_voxels and int(num.max()) == 10  # both limits bite
    assert torch.equal(ours.coords[:, 0], torch.zeros_like(ours.coords[:, 0]))
    assert torch.equal(ours.coords[:, 1:], idx.int())
    assert torch.equal(ours.num_points, num.long())
    assert torch.allclose(ours.features, vox.sum(1) / num[:, None], atol=1e-5)


def _dense_conv(x: torch.Tensor, active: torch.Tensor, conv, subm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A spconv layer written as dense conv3d: (B, C, D, H, W) with zeros off the active set."""
    w = conv.weight.permute(0, 4, 1, 2, 3)                         # (Cout, kD, kH, kW, Cin) -> torch's layout
    stride, pad = tuple(conv.stride), tuple(conv.padding)
    y = F.conv3d(x, w, stride=stride, padding=pad)
    if subm:
        return y * active, active
    ones = torch.ones(1, 1, *w.shape[2:], dtype=x.dtype)
    out_active = (F.conv3d(active, ones, stride=stride, padding=pad) > 0).to(x.dtype)
    return y * out_active, out_active


def _dense_bn(x: torch.Tensor, bn: nn.BatchNorm1d, active: torch.Tensor) -> torch.Tensor:
    s = (bn.weight / (bn.running_var + bn.eps).sqrt()).view(1, -1, 1, 1, 1)
    t = (bn.bias - bn.running_mean * s.flatten()).view(1, -1, 1, 1, 1)
    return (x * s + t) * active


def dense_encoder(enc: SparseEncoder, x: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The SparseEncoder re-done densely: every layer, then masked to its active sites."""
    def module(seq, x, a, subm):
        y, a = _dense_conv(x, a, seq[0], subm)
        return _dense_bn(y, seq[1], a).relu(), a

    x, active = module(enc.conv_input, x, active, True)
    for stage in enc.encoder_layers:
        for block in stage:
            if isinstance(block, SparseBasicBlock):
                y, _ = _dense_conv(x, active, block.conv1, True)
                y = _dense_bn(y, block.bn1, active).relu()
                y, _ = _dense_conv(y, active, block.conv2, True)
                x = (_dense_bn(y, block.bn2, active) + x).relu() * active
            else:
                x, active = module(block, x, active, False)
    return module(enc.conv_out, x, active, False)


def test_sparse_encoder_equals_dense_conv3d_at_active_sites():
    g = torch.Generator().manual_seed(3)
    shape = [41, 24, 24]                                           # z, y, x (a 40-cell z grid + 1, as CMT's)
    cells = torch.randperm(shape[0] * shape[1] * shape[2], generator=g)[:400]
    coords = torch.stack([torch.zeros_like(cells), cells // (shape[1] * shape[2]),
                          (cells // shape[2]) % shape[1], cells % shape[2]], dim=1).int()
    feats = torch.randn(400, 5, generator=g)
    enc = SparseEncoder(5, shape, SparseEncoderConfig())
    for p in enc.parameters():
        if p.dim() == 5:                                           # (Cout, kD, kH, kW, Cin), activations O(1)
            p.data.normal_(0, (27 * p.shape[-1]) ** -0.5, generator=g)
    with torch.no_grad():
        randomise_batchnorm(enc, nn.BatchNorm1d, g, 0.2)
    enc = enc.eval().double()
    threads = torch.get_num_threads()
    with torch.no_grad():
        got = enc(feats.double(), coords, 1)                       # (1, 128 * 2, 3, 3)
        assert torch.get_num_threads() == threads                  # the one-thread spconv guard restores it
        x = torch.zeros(1, 5, *shape, dtype=torch.float64)
        active = torch.zeros(1, 1, *shape, dtype=torch.float64)
        x[0, :, coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()] = feats.double().T
        active[0, 0, coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()] = 1
        want, want_active = dense_encoder(enc, x, active)          # (1, 128, 2, 3, 3)
    assert SparseEncoderConfig().output_depth(40) == want.shape[2] == 2
    assert got.shape == (1, 128 * 2, 3, 3)
    # mmdet3d's dense().view(N, C * D, H, W): channel c * D + d
    want = want.reshape(1, 256, 3, 3)
    assert float((got - want).abs().max()) < 1e-9 * float(want.abs().max())
    assert float(want_active.sum()) > 4 and float(got.abs().sum()) > 0


def test_a_pillar_model_never_imports_spconv():
    """The pillar branch is the option that needs no spconv: building and running the bundled
    model leaves it unimported (a machine without spconv runs every pillar config)."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from aqr_perception.model.runtime import DetectorRuntime\n"
            "rt = DetectorRuntime(None, None, 'cpu')\n"
            "rt.warm_up()\n"
            "assert rt.cfg.lidar.encoder == 'pillar'\n"
            "print('spconv' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_voxel_model_on_a_device_spconv_cannot_use_is_refused_with_the_fix():
    """The PyPI spconv wheel has no CUDA kernels; a voxel model asked to run on CUDA gets one
    line naming the wheel to install (here CUDA itself is absent, which takes the same path)."""
    from aqr_perception.model.sparse_encoder import check_spconv_device

    check_spconv_device(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="spconv-cu126"):
        check_spconv_device(torch.device("cuda"))
