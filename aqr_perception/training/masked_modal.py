"""Masked-modal training (CMT): per sample, with p_img all images are zeroed and every
view marked missing, with p_lidar the LiDAR sweep is removed, otherwise the sample is
left clean. The two drops are exclusive, so a sample always keeps one modality."""
from __future__ import annotations

import torch

from aqr_perception.model.detector import DetectorInputs


def masked_modal(inputs: DetectorInputs, drop_images_p: float, drop_lidar_p: float,
                 generator: torch.Generator | None = None) -> DetectorInputs:
    """Return a copy of ``inputs`` with modalities dropped per sample."""
    b = inputs.batch_size
    u = torch.rand(b, generator=generator)
    drop_img = u < drop_images_p
    drop_lidar = (u >= drop_images_p) & (u < drop_images_p + drop_lidar_p)
    images = inputs.images.clone()
    images[drop_img.to(images.device)] = 0.0
    camera_valid = inputs.camera_valid & ~drop_img.to(inputs.camera_valid.device)[:, None]
    lidar_valid = inputs.lidar_valid & ~drop_lidar.to(inputs.lidar_valid.device)
    points = [p[:0] if bool(d) else p for p, d in zip(inputs.points, drop_lidar)]
    return DetectorInputs(points, images, inputs.lidar2img, camera_valid, lidar_valid)
