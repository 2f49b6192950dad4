"""Masked-modal training (CMT): per sample, with p_img all images are zeroed and every
view marked missing, with p_lidar the LiDAR sweep is removed, otherwise the sample is
left clean. The two drops are exclusive, so a sample always keeps one modality.

On top (not in CMT), ``drop_view_p`` zeroes one view, chosen uniformly, of a sample that
kept its images, as a missing camera topic does in the node: without it the model only
ever sees all six views or none. ``drop_intensity_p`` zeroes the intensity of a kept
sweep, as a LiDAR driver without an intensity field does: without it such a sweep is
worse for the model than no LiDAR at all.
"""
from __future__ import annotations

import torch

from aqr_perception.model.detector import DetectorInputs


def masked_modal(inputs: DetectorInputs, drop_images_p: float, drop_lidar_p: float,
                 generator: torch.Generator | None = None, drop_view_p: float = 0.0,
                 drop_intensity_p: float = 0.0) -> DetectorInputs:
    """Return a copy of ``inputs`` with modalities (and, with ``drop_view_p``, single views;
    with ``drop_intensity_p``, the intensity channel of a kept sweep) dropped per sample.
    images (B, V, 3, H, W), camera_valid (B, V), lidar_valid (B,); points: B tensors
    (N_i, F) ``[x, y, z, intensity, ...]``."""
    b, v = inputs.camera_valid.shape
    u = torch.rand(b, generator=generator)
    drop_img = u < drop_images_p
    drop_lidar = (u >= drop_images_p) & (u < drop_images_p + drop_lidar_p)
    view_mask = drop_img[:, None].expand(b, v).clone()
    if drop_view_p > 0:   # drawn only when asked, so the other drops' random stream is unchanged
        pick = torch.randint(v, (b,), generator=generator)
        drop_one = (torch.rand(b, generator=generator) < drop_view_p) & ~drop_img
        view_mask[drop_one, pick[drop_one]] = True
    images = inputs.images.clone()
    images[view_mask.to(images.device)] = 0.0
    camera_valid = inputs.camera_valid & ~view_mask.to(inputs.camera_valid.device)
    lidar_valid = inputs.lidar_valid & ~drop_lidar.to(inputs.lidar_valid.device)
    points = [p[:0] if bool(d) else p for p, d in zip(inputs.points, drop_lidar)]
    if drop_intensity_p > 0:   # drawn only when asked, as above
        no_intensity = (torch.rand(b, generator=generator) < drop_intensity_p) & ~drop_lidar
        points = [_without_intensity(p) if bool(d) else p for p, d in zip(points, no_intensity)]
    return DetectorInputs(points, images, inputs.lidar2img, camera_valid, lidar_valid)


def _without_intensity(points: torch.Tensor) -> torch.Tensor:
    out = points.clone()
    out[:, 3] = 0.0
    return out
