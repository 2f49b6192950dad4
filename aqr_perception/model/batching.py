"""numpy model arrays -> a DetectorInputs batch (torch)."""
from __future__ import annotations

import numpy as np
import torch

from aqr_perception.model.detector import DetectorInputs


def make_inputs(samples: list, device: torch.device | str = "cpu") -> DetectorInputs:
    """Stack ``aqr_perception.frames.preprocess.ModelArrays``-like samples into one batch."""
    return DetectorInputs(
        points=[torch.from_numpy(np.ascontiguousarray(s.points)).to(device) for s in samples],
        images=torch.from_numpy(np.stack([s.images for s in samples])).to(device).float(),
        lidar2img=torch.from_numpy(np.stack([s.lidar2img for s in samples])).to(device).float(),
        camera_valid=torch.from_numpy(np.stack([s.camera_valid for s in samples])).to(device),
        lidar_valid=torch.tensor([bool(s.lidar_valid) for s in samples], device=device))
