"""Adaptive Query Routing: per-query modality weights and the attention bias they define.

The router predicts for every object query a LiDAR weight and a camera weight in (0, 1).
They become an additive bias on the cross-attention logits (before the softmax), over
the memory ``concat[BEV tokens (bev_h*bev_w), image tokens (V*h*w)]``:

* global mode: every BEV key gets ``(lidar_weight - 0.5) * 2 * strength``, every image
  key ``(camera_weight - 0.5) * 2 * strength``;
* local mode: only keys in a window around the query's projection get a bias,
  ``weight * max(0, 1 - dist / window) * strength`` (dist in cells from the centre
  cell; a BEV window around its BEV cell, a camera window around its pixel in the view
  where it is visible), zero elsewhere.

:class:`AqrBias` is the compact description (a few numbers per query) that attention
implementations consume; :func:`dense_bias` expands it to (B, Q, K), the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aqr_perception.config import AqrRouterConfig


@dataclass
class QueryProjection:
    """Where each query's reference point lands in the memory.

    bev_index: (B, Q) long, flat index ``row * bev_w + col`` into the BEV tokens
    cam_view, cam_row, cam_col: (B, Q) long, the view and stride-16 cell where the
        point is visible (any value where ``cam_visible`` is False)
    cam_visible: (B, Q) bool, visible in some (valid) view
    """

    bev_index: Tensor
    cam_view: Tensor
    cam_row: Tensor
    cam_col: Tensor
    cam_visible: Tensor


@dataclass
class MemoryLayout:
    """Shape of the memory: bev_h*bev_w BEV tokens, then num_views*img_h*img_w image tokens."""

    bev_h: int
    bev_w: int
    num_views: int
    img_h: int
    img_w: int

    @property
    def num_bev(self) -> int:
        return self.bev_h * self.bev_w

    @property
    def num_keys(self) -> int:
        return self.num_bev + self.num_views * self.img_h * self.img_w


@dataclass
class AqrBias:
    """Compact AQR bias for one cross-attention call (see module docstring).

    lidar_weight, camera_weight: (B, Q) in (0, 1)
    projection: needed in local mode
    segment_padding: (B, 1 + V) bool, the key padding per segment (0 = BEV, 1 + v = view
        v) when the caller built the key padding that way (the detector does, from
        ``lidar_valid`` / ``camera_valid``); None: the attention finds it out from the key
        padding, which costs a host sync on CUDA
    """

    mode: str
    strength: float
    lidar_weight: Tensor
    camera_weight: Tensor
    layout: MemoryLayout
    projection: QueryProjection | None = None
    bev_window: int = 15
    camera_window: int = 15
    #: local mode: the windows of ``projection`` (:func:`local_windows`), when the caller
    #: computed them once for several calls (the decoder's layers); None: computed per call
    windows: LocalWindows | None = None
    segment_padding: Tensor | None = None


@dataclass
class LocalWindows:
    """Where a local-mode bias can be non-zero: the BEV window around each query's cell,
    then the camera window around its pixel. It depends on the reference points only,
    so the decoder's layers share it; only the router weights differ per layer.

    keys: (B, Q, N) long key indices into the memory (N = bev_window^2 + camera_window^2;
        0 where ``valid`` is False)
    valid: (B, Q, N) bool, the cell lies inside its map (and the point is visible, camera)
    bev_decay: (bev_window^2,) and camera_decay: (camera_window^2,) fp32,
        ``max(0, 1 - dist / window)`` of each window offset
    """

    keys: Tensor
    valid: Tensor
    bev_decay: Tensor
    camera_decay: Tensor


def window_offsets(window: int, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """Offsets of a ``window x window`` square and their decay-free distances.

    Returns (dr, dc, dist), each (window*window,), dist = Euclidean distance in cells.
    """
    half = window // 2
    r = torch.arange(-half, half + 1, device=device)
    dr, dc = torch.meshgrid(r, r, indexing="ij")
    dr, dc = dr.reshape(-1), dc.reshape(-1)
    return dr, dc, torch.sqrt((dr * dr + dc * dc).float())


#: additive logit of an exactly masked key: exp(-1000) == 0 in fp16/bf16/fp32
PAD = 1000.0


def segment_index(layout: MemoryLayout, device=None) -> Tensor:
    """(K,) segment of every key: 0 = BEV, 1 + v = camera view v."""
    img = torch.arange(layout.num_views, device=device).repeat_interleave(layout.img_h * layout.img_w) + 1
    return torch.cat([torch.zeros(layout.num_bev, dtype=torch.long, device=device), img])


def global_biases(bias: AqrBias) -> tuple[Tensor, Tensor]:
    """Global mode: the (B, Q) bias of every BEV key and of every image key of each query."""
    return (bias.lidar_weight - 0.5) * 2 * bias.strength, (bias.camera_weight - 0.5) * 2 * bias.strength


def local_windows(proj: QueryProjection, lay: MemoryLayout, bev_window: int, camera_window: int) -> LocalWindows:
    """The windows of a local-mode bias for the queries of ``proj`` (see :class:`LocalWindows`)."""
    device = proj.bev_index.device
    # BEV window around the query's cell
    dr, dc, dist = window_offsets(bev_window, device)
    bev_decay = (1 - dist / bev_window).clamp(min=0)
    row = torch.div(proj.bev_index, lay.bev_w, rounding_mode="floor")[..., None] + dr
    col = (proj.bev_index % lay.bev_w)[..., None] + dc
    bev_ok = (row >= 0) & (row < lay.bev_h) & (col >= 0) & (col < lay.bev_w)
    bev_key = torch.where(bev_ok, row * lay.bev_w + col, 0)
    # camera window around the query's pixel in its view
    dr, dc, dist = window_offsets(camera_window, device)
    camera_decay = (1 - dist / camera_window).clamp(min=0)
    row = proj.cam_row[..., None] + dr
    col = proj.cam_col[..., None] + dc
    cam_ok = (row >= 0) & (row < lay.img_h) & (col >= 0) & (col < lay.img_w) & proj.cam_visible[..., None]
    cam_key = torch.where(cam_ok, lay.num_bev + (proj.cam_view[..., None] * lay.img_h + row) * lay.img_w + col, 0)
    return LocalWindows(torch.cat([bev_key, cam_key], -1), torch.cat([bev_ok, cam_ok], -1), bev_decay, camera_decay)


def local_window_entries(bias: AqrBias) -> tuple[Tensor, Tensor, Tensor]:
    """The non-zero entries of a local-mode bias.

    Returns:
        keys: (B, Q, N) long key indices into the memory (N = bev_window^2 + camera_window^2)
        values: (B, Q, N) bias values (0 where the window cell falls outside its map or
            the camera point is not visible; such entries point at key 0)
        valid: (B, Q, N) bool
    """
    win = bias.windows
    if win is None:
        assert bias.projection is not None, "local AQR bias needs the query projection"
        win = local_windows(bias.projection, bias.layout, bias.bev_window, bias.camera_window)
    dtype = bias.lidar_weight.dtype                     # fp16/bf16 weights: keep their dtype
    values = torch.cat([bias.lidar_weight[..., None] * win.bev_decay.to(dtype) * bias.strength,
                        bias.camera_weight[..., None] * win.camera_decay.to(dtype) * bias.strength], -1)
    return win.keys, values * win.valid, win.valid


def dense_bias(bias: AqrBias) -> Tensor:
    """Expand the compact bias to the reference dense form (B, Q, K) over all keys."""
    b, q = bias.lidar_weight.shape
    lay = bias.layout
    if bias.mode == "global":
        bev, cam = global_biases(bias)
        return torch.cat([bev[..., None].expand(b, q, lay.num_bev),
                          cam[..., None].expand(b, q, lay.num_keys - lay.num_bev)], dim=-1)
    keys, values, _ = local_window_entries(bias)
    # windows never overlap themselves; invalid entries add 0 to key 0
    return bias.lidar_weight.new_zeros(b, q, lay.num_keys).scatter_add_(-1, keys, values)


class AqrRouter(nn.Module):
    """Predicts (lidar_weight, camera_weight) per query.

    Reads the query (content + position encoding), the memory feature at its BEV cell,
    the memory feature at its camera pixel (zeros when not visible), and whether each
    modality is available for it. Output bias initialised to ``init_logit`` with a
    near-zero output weight, so training starts at weights ~sigmoid(1.5) = 0.82 for
    every query, close to unbiased CMT.
    """

    def __init__(self, embed_dims: int, cfg: AqrRouterConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * embed_dims + 2, embed_dims), nn.ReLU(inplace=True),
                                 nn.Linear(embed_dims, 2))
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.constant_(self.mlp[-1].bias, cfg.init_logit)

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, proj: QueryProjection,
                layout: MemoryLayout, lidar_available: Tensor, camera_available: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            query, query_pos: (B, Q, C); memory: (B, K, C).
            lidar_available: (B,) bool; camera_available: (B, Q) bool (visible in a valid view).
        Returns:
            lidar_weight, camera_weight: (B, Q) in (0, 1).
        """
        c = memory.shape[-1]
        bev_feat = torch.gather(memory, 1, proj.bev_index[..., None].expand(-1, -1, c))
        cam_key = layout.num_bev + (proj.cam_view * layout.img_h + proj.cam_row) * layout.img_w + proj.cam_col
        cam_key = torch.where(camera_available, cam_key, 0)
        cam_feat = torch.gather(memory, 1, cam_key[..., None].expand(-1, -1, c)) * camera_available[..., None]
        bev_feat = bev_feat * lidar_available[:, None, None]
        flags = torch.stack([lidar_available[:, None].expand_as(camera_available), camera_available], -1)
        logits = self.mlp(torch.cat([query + query_pos, bev_feat, cam_feat, flags.to(query.dtype)], dim=-1))
        w = logits.sigmoid()
        return w[..., 0], w[..., 1]


def query_projection(ref: Tensor, uv: Tensor, visible: Tensor, layout: MemoryLayout,
                     feature_stride: int, pad_h: int, pad_w: int) -> QueryProjection:
    """Router inputs from the reference points (``pts_bev_indices`` / ``pts_pers_indices``).

    Args:
        ref: (B, Q, 3) normalised reference points.
        uv: (B, V, Q, 2) their input-image pixels; visible: (B, V, Q) bool (valid views only).
    The BEV cell is ``floor(x * bev_w), floor(y * bev_h)``. Of the views where the point
    is visible, the one where it lies closest to the image centre is used (overlapping
    cameras see it twice); its stride-16 cell is ``floor(uv / stride)``.
    """
    col = (ref[..., 0] * layout.bev_w).floor().long().clamp(0, layout.bev_w - 1)
    row = (ref[..., 1] * layout.bev_h).floor().long().clamp(0, layout.bev_h - 1)
    centre = uv.new_tensor([pad_w / 2, pad_h / 2])
    dist = (uv.detach() - centre).norm(dim=-1).masked_fill(~visible, float("inf"))  # (B, V, Q)
    view = dist.argmin(dim=1)                                                       # (B, Q)
    any_visible = visible.any(dim=1)
    best_uv = torch.gather(uv.detach(), 1, view[:, None, :, None].expand(-1, 1, -1, 2)).squeeze(1)
    cam_col = (best_uv[..., 0] / feature_stride).floor().long().clamp(0, layout.img_w - 1)
    cam_row = (best_uv[..., 1] / feature_stride).floor().long().clamp(0, layout.img_h - 1)
    zero = torch.zeros_like(view)
    return QueryProjection(bev_index=row * layout.bev_w + col,
                           cam_view=torch.where(any_visible, view, zero),
                           cam_row=torch.where(any_visible, cam_row, zero),
                           cam_col=torch.where(any_visible, cam_col, zero),
                           cam_visible=any_visible)
