"""CMT position encodings: BEV keys, image (RV) keys, and object-query encodings.

Frames and units:
    reference points  (B, Q, 3) in [0, 1]^3, normalised over ``point_cloud_range``
    lidar2img         (B, V, 4, 4) LiDAR frame (m) -> input-image pixels (u*d, v*d, d, 1),
                      image resize/augmentation included
    BEV grid          rows = y cells, columns = x cells
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn


def in_fp32(method):
    """Run a PositionEncoder method in float32 whatever autocast says (mmdet's ``force_fp32``):
    the rays reach u*d ~ 1600 * 54 and the encodings' sin/cos need float32 (fp16 autocast
    was seen to break them). Floating tensor arguments are cast to float32."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        cast = lambda a: a.float() if isinstance(a, Tensor) and a.is_floating_point() else a  # noqa: E731
        with torch.autocast(self.pc_range.device.type, enabled=False):
            return method(self, *(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})
    return run


def pos2embed(pos: Tensor, num_pos_feats: int = 128) -> Tensor:
    """Sine/cosine embedding of the first two coordinates, CMT's ``pos2embed``.

    Args:
        pos: (..., >=2) with x = pos[..., 0], y = pos[..., 1], normalised to [0, 1].
        num_pos_feats: features per coordinate (CMT passes hidden_dim = 256).

    Returns:
        (..., 2 * num_pos_feats), ``[y-part, x-part]``, each interleaving sin/cos.
        As in the official code ``dim_t = 2 * (i // 2) / num_pos_feats + 1`` (the
        temperature is unused), so frequencies lie in [1, 2) * 2*pi.
    """
    scale = 2 * math.pi
    pos = pos * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=pos.device)
    dim_t = 2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats + 1
    pos_x = pos[..., 0, None] / dim_t
    pos_y = pos[..., 1, None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((pos_y, pos_x), dim=-1)


def bev_cell_centres(size: int, device: torch.device | None = None) -> Tensor:
    """(size*size, 2) normalised ``(x, y)`` centres ``(i + 0.5) / size`` in row-major (y, x) order."""
    idx = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size
    y, x = torch.meshgrid(idx, idx, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


def ray_depths(depth_num: int, depth_start: float, depth_max: float, device=None) -> Tensor:
    """(D,) CMT's ray depths ``start + i * (max - start) / D`` (max = point_cloud_range x_max)."""
    return depth_start + torch.arange(depth_num, dtype=torch.float32, device=device) * (
        depth_max - depth_start) / depth_num


def rays_to_normalised_lidar(uvd: Tensor, img2lidar: Tensor, pc_range: Tensor) -> Tensor:
    """Homogeneous image points ``(u*d, v*d, d, 1)`` -> LiDAR points normalised over the range.

    Args:
        uvd: (..., 4) points; img2lidar: (..., 4, 4) broadcastable to them.
        pc_range: (6,) tensor.
    Returns:
        (..., 3) in [0, 1] inside the range (not clamped).
    """
    xyz = (img2lidar @ uvd.unsqueeze(-1)).squeeze(-1)[..., :3]
    return (xyz - pc_range[:3]) / (pc_range[3:] - pc_range[:3])


class InferenceCache:
    """The last result of each encoding, reused while nothing it depends on changed.

    In inference the BEV key encodings depend on the weights alone, and the image key and
    query encodings on the weights and the camera calibration (lidar2img), which changes
    only when the rig does; recomputing them costs ~9 ms per frame for the tiny model on
    CPU. A result is reused when the same parameters (identity, storage and in-place
    version, so load_state_dict, optimizer steps and ``.to()`` all invalidate it) and
    inputs equal to the stored ones. Never with autograd on, in training mode, or while
    a graph is traced for export (that would bake one calibration into the graph).
    """

    def __init__(self) -> None:
        self._store: dict[str, tuple[tuple, tuple[Tensor, ...], Tensor]] = {}

    @staticmethod
    def usable(module: nn.Module) -> bool:
        return not (module.training or torch.is_grad_enabled() or torch.compiler.is_compiling())

    def get(self, name: str, params: list[Tensor], inputs: tuple[Tensor, ...], compute) -> Tensor:
        key = tuple((id(p), p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        hit = self._store.get(name)
        if hit is not None and hit[0] == key and len(hit[1]) == len(inputs) and all(
                a.shape == b.shape and a.device == b.device and a.dtype == b.dtype and torch.equal(a, b)
                for a, b in zip(hit[1], inputs)):
            return hit[2]
        out = compute()
        self._store[name] = (key, tuple(t.detach().clone() for t in inputs), out)
        return out


class PositionEncoder(nn.Module):
    """bev_embedding (512->256->256) and rv_embedding (3D->4C->C) shared by keys and queries."""

    def __init__(self, embed_dims: int, depth_num: int, depth_start: float, pc_range: list[float],
                 bev_size: int, feature_stride: int) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.bev_embedding = nn.Sequential(nn.Linear(embed_dims * 2, embed_dims), nn.ReLU(inplace=True),
                                           nn.Linear(embed_dims, embed_dims))
        self.rv_embedding = nn.Sequential(nn.Linear(depth_num * 3, embed_dims * 4), nn.ReLU(inplace=True),
                                          nn.Linear(embed_dims * 4, embed_dims))
        self.register_buffer("pc_range", torch.tensor(pc_range, dtype=torch.float32), persistent=False)
        self.register_buffer("depths", ray_depths(depth_num, depth_start, pc_range[3]), persistent=False)
        self.register_buffer("bev_coords", bev_cell_centres(bev_size), persistent=False)
        self.feature_stride = feature_stride
        self.cache = InferenceCache()

    # ---------------------------------------------------------------- keys
    @in_fp32
    def bev_key_pe(self) -> Tensor:
        """(bev_size^2, C) encodings of the BEV cells (row-major, y then x)."""
        compute = lambda: self.bev_embedding(pos2embed(self.bev_coords, self.embed_dims))  # noqa: E731
        if not self.cache.usable(self):
            return compute()
        return self.cache.get("bev", list(self.bev_embedding.parameters()), (self.bev_coords,), compute)

    def image_rays(self, feat_h: int, feat_w: int, pad_h: int, pad_w: int) -> Tensor:
        """(h, w, D, 4) ray points ``(u*d, v*d, d, 1)`` of each feature pixel.

        As in CMT the pixel of feature cell (i, j) is its top-left corner
        ``(j * pad_w / w, i * pad_h / h)`` in input-image pixels.
        """
        v = torch.arange(feat_h, dtype=torch.float32, device=self.depths.device) * pad_h / feat_h
        u = torch.arange(feat_w, dtype=torch.float32, device=self.depths.device) * pad_w / feat_w
        vv, uu, dd = torch.meshgrid(v, u, self.depths, indexing="ij")
        return torch.stack([uu * dd, vv * dd, dd, torch.ones_like(dd)], dim=-1)

    @in_fp32
    def image_key_pe(self, lidar2img: Tensor, feat_h: int, feat_w: int, pad_h: int, pad_w: int,
                     img2lidar: Tensor | None = None) -> Tensor:
        """(B, V, h, w, C) encodings of the image tokens.

        lidar2img: (B, V, 4, 4). Each pixel's 64-depth ray goes through inv(lidar2img)
        (``img2lidar`` when given: an exported graph has no matrix inverse), is normalised
        over the range, flattened to 3*D values and embedded.
        """
        if self.cache.usable(self):
            return self.cache.get(f"image {feat_h}x{feat_w} {pad_h}x{pad_w}", list(self.rv_embedding.parameters()),
                                  (lidar2img,), lambda: self._image_key_pe(lidar2img, feat_h, feat_w, pad_h, pad_w,
                                                                          img2lidar))
        return self._image_key_pe(lidar2img, feat_h, feat_w, pad_h, pad_w, img2lidar)

    def _image_key_pe(self, lidar2img: Tensor, feat_h: int, feat_w: int, pad_h: int, pad_w: int,
                      img2lidar: Tensor | None) -> Tensor:
        rays = self.image_rays(feat_h, feat_w, pad_h, pad_w)  # (h, w, D, 4)
        if img2lidar is None:
            img2lidar = torch.linalg.inv(lidar2img.float())   # (B, V, 4, 4)
        pts = rays_to_normalised_lidar(rays[None, None], img2lidar[:, :, None, None, None], self.pc_range)
        return self.rv_embedding(pts.flatten(-2))

    # ------------------------------------------------------------- queries
    @in_fp32
    def project_reference_points(self, ref: Tensor, lidar2img: Tensor, pad_h: int, pad_w: int
                                 ) -> tuple[Tensor, Tensor]:
        """Project normalised reference points into every view.

        Args:
            ref: (B, Q, 3) in [0, 1]^3.  lidar2img: (B, V, 4, 4).
        Returns:
            uv: (B, V, Q, 2) input-image pixel coordinates,
            visible: (B, V, Q) bool, in front of the camera and inside the image.
        """
        xyz = ref * (self.pc_range[3:] - self.pc_range[:3]) + self.pc_range[:3]
        hom = torch.cat([xyz, torch.ones_like(xyz[..., :1])], dim=-1)      # (B, Q, 4)
        proj = torch.einsum("bvij,bqj->bvqi", lidar2img.float(), hom)      # (B, V, Q, 4)
        depth = proj[..., 2:3]
        in_front = depth.detach() > 0
        # CMT's +-1e-6: never divide by exactly zero, keep the sign of the depth
        uv = proj[..., :2] / (depth.detach() + in_front * 1e-6 - (~in_front) * 1e-6)
        visible = (in_front.squeeze(-1) & (uv[..., 0] >= 0) & (uv[..., 0] < pad_w)
                   & (uv[..., 1] >= 0) & (uv[..., 1] < pad_h))
        return uv, visible

    @in_fp32
    def query_pe(self, ref: Tensor, lidar2img: Tensor, pad_h: int, pad_w: int,
                 camera_valid: Tensor | None = None, img2lidar: Tensor | None = None) -> Tensor:
        """(B, Q, C) query encodings: BEV part + sum over visible views of the RV part.

        For each view where the reference point lands in front of the camera and inside
        the image, the 64-depth ray through its pixel is rebuilt, taken back to the LiDAR
        frame and embedded by the shared rv_embedding. ``camera_valid`` (B, V) drops
        missing views from the sum.
        """
        if self.cache.usable(self):
            valid = camera_valid if camera_valid is not None else torch.ones(0, dtype=torch.bool)
            params = list(self.bev_embedding.parameters()) + list(self.rv_embedding.parameters())
            return self.cache.get(f"query {pad_h}x{pad_w}", params, (ref, lidar2img, valid),
                                  lambda: self._query_pe(ref, lidar2img, pad_h, pad_w, camera_valid, img2lidar))
        return self._query_pe(ref, lidar2img, pad_h, pad_w, camera_valid, img2lidar)

    def _query_pe(self, ref: Tensor, lidar2img: Tensor, pad_h: int, pad_w: int, camera_valid: Tensor | None,
                  img2lidar: Tensor | None) -> Tensor:
        bev = self.bev_embedding(pos2embed(ref, self.embed_dims))
        uv, visible = self.project_reference_points(ref, lidar2img, pad_h, pad_w)
        if camera_valid is not None:
            visible = visible & camera_valid[:, :, None]
        d = self.depths
        rays = torch.stack([uv[..., 0:1] * d, uv[..., 1:2] * d, d.expand_as(uv[..., 0:1] * d),
                            torch.ones_like(uv[..., 0:1] * d)], dim=-1)    # (B, V, Q, D, 4)
        if img2lidar is None:
            img2lidar = torch.linalg.inv(lidar2img.float())
        pts = rays_to_normalised_lidar(rays, img2lidar[:, :, None, None], self.pc_range)
        rv = self.rv_embedding(pts.flatten(-2))                             # (B, V, Q, C)
        return bev + (rv * visible.unsqueeze(-1)).sum(dim=1)
