"""Hard voxelization and the mean voxel feature (mmdet3d ``Voxelization`` + ``HardSimpleVFE``).

Plain torch, deterministic, no parameters. Frames: points in the LiDAR frame (m);
voxel coordinates are ``[batch, z, y, x]`` cells counted from ``point_cloud_range``'s
minimum (spconv's zyx order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Voxels:
    """Voxelized points of a batch.

    features: (P, F) mean of each voxel's kept points (HardSimpleVFE)
    num_points: (P,) kept points per voxel (1..max_points)
    coords: (P, 4) int32 ``[batch, z, y, x]``
    """

    features: Tensor
    num_points: Tensor
    coords: Tensor


class HardVoxelizer(nn.Module):
    """Points -> voxel means, as mmdet3d's hard voxelization followed by HardSimpleVFE.

    A point belongs to cell ``floor((p - min) / voxel_size)``; points outside the grid
    (``round((max - min) / size)`` cells per axis) or non-finite are dropped. Voxels are
    numbered in the order of their first point; the first ``max_points`` points of a
    voxel (input order) are kept, and voxels beyond ``max_voxels`` are dropped, which
    is what the CPU and CUDA kernels of mmcv do.
    """

    def __init__(self, pc_range: list[float], voxel_size: list[float], max_points: int, max_voxels: int) -> None:
        super().__init__()
        self.register_buffer("pc_min", torch.tensor(pc_range[:3], dtype=torch.float32), persistent=False)
        self.register_buffer("size", torch.tensor(voxel_size, dtype=torch.float32), persistent=False)
        #: cells per axis, x, y, z
        self.grid = [round((pc_range[3 + i] - pc_range[i]) / voxel_size[i]) for i in range(3)]
        self.max_points = max_points
        self.max_voxels = max_voxels

    def _single(self, pts: Tensor, b: int) -> tuple[Tensor, Tensor, Tensor]:
        f = pts.shape[1]
        cell = ((pts[:, :3] - self.pc_min) / self.size).floor()
        grid = cell.new_tensor(self.grid)
        # NaN fails both comparisons and +-inf one of them: no separate finiteness pass
        src = ((cell >= 0).all(dim=1) & (cell < grid).all(dim=1)).nonzero().squeeze(1)   # rows inside
        cell = cell[src].long()
        if src.shape[0] == 0:
            return pts.new_zeros(0, f), pts.new_zeros(0, dtype=torch.long), pts.new_zeros(0, 4, dtype=torch.int32)
        nx, ny, _ = self.grid
        vid = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]
        uniq, inverse = torch.unique(vid, return_inverse=True)
        n = src.shape[0]
        order_idx = torch.arange(n, device=pts.device)
        first = torch.full((uniq.shape[0],), n, dtype=torch.long, device=pts.device)
        first = first.scatter_reduce(0, inverse, order_idx, reduce="amin")
        # number voxels by first appearance, then keep the first max_voxels of them
        by_first = torch.argsort(first)
        voxel_rank = torch.empty_like(first)
        voxel_rank[by_first] = torch.arange(first.shape[0], device=pts.device)
        slot_voxel = voxel_rank[inverse]                                   # (N,) voxel number of each point
        sort = torch.argsort(slot_voxel, stable=True)                      # input order within a voxel
        counts = torch.bincount(slot_voxel, minlength=first.shape[0])
        starts = torch.cumsum(counts, 0) - counts
        rank_in_voxel = torch.empty_like(sort)
        rank_in_voxel[sort] = torch.arange(n, device=pts.device) - starts[slot_voxel[sort]]
        keep = ((rank_in_voxel < self.max_points) & (slot_voxel < self.max_voxels)).nonzero().squeeze(1)
        nv = min(first.shape[0], self.max_voxels)
        # the kept rows in one gather from the input (not the inside rows first, then these)
        sums = pts.new_zeros(nv, f).index_add_(0, slot_voxel[keep], pts[src[keep]])
        num = counts[:nv].clamp(max=self.max_points)
        # the cell of voxel k is the cell of its first point
        first_point = first[by_first[:nv]]
        c = cell[first_point]
        coords = torch.stack([torch.full_like(c[:, 0], b), c[:, 2], c[:, 1], c[:, 0]], dim=1).to(torch.int32)
        return sums / num[:, None].to(pts.dtype), num, coords

    @torch.no_grad()
    def forward(self, points: list[Tensor]) -> Voxels:
        """points: B tensors (N_i, F) in the LiDAR frame -> :class:`Voxels` of the batch."""
        parts = [self._single(p, b) for b, p in enumerate(points)]
        return Voxels(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                      torch.cat([p[2] for p in parts]))
