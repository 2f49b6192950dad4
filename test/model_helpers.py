"""Shared builders for model tests: a calibrated batch on the nuScenes-like rig."""
import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from aqr_perception.data.rig import nuscenes_like_rig, resize_intrinsics
from aqr_perception.model import DetectorInputs


def rig_lidar2img(width: int, height: int) -> torch.Tensor:
    """(V, 4, 4) lidar2img of the six-camera rig resized from 1600x900 to width x height."""
    mats = []
    for cam in nuscenes_like_rig():
        k4 = np.eye(4)
        k4[:3, :3] = resize_intrinsics(cam.K, width / 1600, height / 900)
        mats.append(k4 @ cam.lidar_to_camera)
    return torch.tensor(np.stack(mats), dtype=torch.float32)


def random_inputs(cfg, batch=1, points=2000, seed=0, lidar_valid=None, camera_valid=None) -> DetectorInputs:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image.input_height, cfg.image.input_width
    pts = [torch.cat([torch.randn(points, 2, generator=g) * 15, torch.randn(points, 1, generator=g),
                      torch.rand(points, 1, generator=g)], 1) for _ in range(batch)]
    return DetectorInputs(
        points=pts, images=torch.rand(batch, cfg.num_views, 3, h, w, generator=g) * 255,
        lidar2img=rig_lidar2img(w, h)[None].repeat(batch, 1, 1, 1),
        camera_valid=torch.ones(batch, cfg.num_views, dtype=torch.bool) if camera_valid is None else camera_valid,
        lidar_valid=torch.ones(batch, dtype=torch.bool) if lidar_valid is None else lidar_valid)


def randomise_batchnorm(model, kind, gen: torch.Generator, spread: float) -> None:
    """Random statistics and affine terms in every ``kind`` BatchNorm of ``model`` (means and
    biases N(0, spread), variances and weights U(0.5, 1.5)), so a BatchNorm mapped wrongly shows."""
    for m in model.modules():
        if isinstance(m, kind):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * spread)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * spread)


#: torch calls that read a tensor's values on the host (on CUDA: a wait for the GPU)
HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "cpu", "numpy")
#: torch calls that make a tensor from host values (on CUDA: a blocking host-to-device copy)
FROM_HOST = ("tensor", "as_tensor", "new_tensor")


class HostReadSpy(TorchFunctionMode):
    """While active, appends to ``events`` the name of every torch call in HOST_READS, "mask"
    for a boolean-mask index (a nonzero on CUDA) and, with ``from_host``, the FROM_HOST
    calls; a test adds its own marks (hooks) to the same list. A torch function mode sees
    only its own thread's calls, and changes no class (monkeypatching
    ``torch.Tensor.__getitem__`` would leave 0-d tensors looking like sequences)."""

    def __init__(self, from_host: bool = False) -> None:
        super().__init__()
        self.events: list[str] = []
        self.watched = HOST_READS + (FROM_HOST if from_host else ())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.watched:
            self.events.append(name)
        elif name == "__getitem__":
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self.events.append("mask")
        return func(*args, **(kwargs or {}))
