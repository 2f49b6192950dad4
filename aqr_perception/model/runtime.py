"""Inference runtime: one sample of numpy model arrays in, numpy detections out.

The bridge between the ROS side (numpy, no torch) and the detector (torch). Loads a
checkpoint (or builds an untrained model from a config, reported as such), picks the
device, runs the model under ``torch.inference_mode`` and checks the outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from aqr_perception.config import ConfigError, ModelConfig
from aqr_perception.detections import FrameDetections
from aqr_perception.model.batching import make_inputs
from aqr_perception.model.checkpoint import load_checkpoint, resolve_device
from aqr_perception.model.detector import CmtAqrDetector
from aqr_perception.model.host_decode import decode_to_host

PACKAGE_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BUNDLED_CHECKPOINT = PACKAGE_RESOURCES / "cmt_aqr_tiny.pt"
#: checkpoint value that asks for untrained weights built from the config (benchmarks, tests)
UNTRAINED = "none"
#: points in the synthetic warm-up sample (enough to fill pillars in every part of the range)
WARMUP_POINTS = 2000


class ModelOutputError(RuntimeError):
    """The model produced non-finite values; the frame must not be published."""


@dataclass
class Prediction:
    """numpy result of one frame: the decoded detections (top-k, before any score
    threshold), whether any modality was available, and the inference time in ms."""

    detections: FrameDetections
    has_input: bool
    inference_ms: float


class DetectorRuntime:
    """A loaded detector on a device."""

    def __init__(self, checkpoint: str | Path | None, fallback_config: ModelConfig | None = None,
                 device: str = "auto", cpu_threads: int = 0, runtime: str = "torch") -> None:
        """``checkpoint``: a .pt file; None or "" for the bundled one; ``UNTRAINED`` ("none")
        for random weights built from ``fallback_config`` (also used when nothing is bundled).
        ``cpu_threads`` > 0 sets PyTorch's intra-op thread count (process-wide). ``runtime``
        "onnxruntime" runs the convolutional branches in onnxruntime (CPU only; exported
        here, ~6 s for the tiny model); "torch_bf16" runs them in bf16, channels-last
        (model/bf16_runtime.py)."""
        if cpu_threads > 0:
            torch.set_num_threads(cpu_threads)
        self.device = resolve_device(device)
        if checkpoint == UNTRAINED:
            path = None
        elif checkpoint:
            path = Path(checkpoint)
        else:
            path = BUNDLED_CHECKPOINT if BUNDLED_CHECKPOINT.exists() else None
        if path is not None:
            self.model, blob = load_checkpoint(path, self.device)
            self.checkpoint = str(path)
            self.meta = blob.get("meta", {})
        else:
            if fallback_config is None:
                raise ValueError("no checkpoint and no model config to build a model from")
            self.model = CmtAqrDetector(fallback_config).to(self.device).eval()
            self.checkpoint = ""
            self.meta = {"untrained": True}
        self.cfg: ModelConfig = self.model.cfg
        if self.cfg.lidar.encoder == "voxel":
            from aqr_perception.model.sparse_encoder import check_spconv_device

            try:
                check_spconv_device(self.device)
            except RuntimeError as exc:
                raise ConfigError(str(exc)) from None
        self.cpu_threads = torch.get_num_threads()
        self.runtime = runtime
        #: start-up remarks for the user (the node logs them as warnings)
        self.warnings: list[str] = []
        self._forward = self.model
        if runtime == "onnxruntime":
            if self.device.type != "cpu":
                raise ConfigError(f"runtime 'onnxruntime' runs on the CPU, not on {self.device} (runtime:=torch)")
            from aqr_perception.model.onnx_runtime import OnnxRuntimeDetector

            self._forward = OnnxRuntimeDetector(self.model, self.cpu_threads)
        elif runtime == "torch_bf16":
            from aqr_perception.model.bf16_runtime import Bf16BranchDetector, bf16_warning

            self._forward = Bf16BranchDetector(self.model)     # converts the model's convolutions in place
            slow = bf16_warning(self.device)
            if slow:
                self.warnings.append(f"runtime torch_bf16: {slow} than runtime:=torch")
        elif runtime != "torch":
            raise ConfigError(f"unknown runtime {runtime!r} (torch, torch_bf16 or onnxruntime)")
        self.input_hw = (self.cfg.image.input_height, self.cfg.image.input_width)

    @property
    def trained(self) -> bool:
        return bool(self.checkpoint)

    def release_memory(self) -> None:
        """After a CUDA out-of-memory error: free the allocator's cached blocks."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm_up(self) -> float:
        """One inference on a synthetic sample (every view, points spread over the range), so
        that the first real frame does not pay for kernel selection and first allocations
        (measured on CPU for the tiny model: 855 ms for the first call, 180 ms after).
        Returns its time in ms."""
        cfg = self.cfg
        (h, w), v, r = self.input_hw, cfg.num_views, cfg.point_cloud_range
        rng = np.random.default_rng(0)
        points = np.column_stack([rng.uniform(r[i], r[i + 3], WARMUP_POINTS) for i in range(3)]
                                 + [rng.uniform(0.0, 1.0, WARMUP_POINTS)]).astype(np.float32)
        sample = SimpleNamespace(points=points, images=np.zeros((v, 3, h, w), np.uint8),
                                 lidar2img=np.tile(np.eye(4, dtype=np.float32), (v, 1, 1)),
                                 camera_valid=np.ones(v, dtype=bool), lidar_valid=True)
        return self.infer(sample).inference_ms

    def infer(self, arrays) -> Prediction:
        """Run one sample (``frames.preprocess.ModelArrays``); raises ModelOutputError on NaN/inf.
        The result comes to the host in one copy (model/host_decode.py)."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            inputs = make_inputs([arrays], self.device)
            host = decode_to_host(self._forward(inputs), self.cfg.decode)
        if not host.finite:
            raise ModelOutputError("non-finite detector outputs")
        return Prediction(host.frames[0], bool(host.has_input[0]), 1e3 * (time.perf_counter() - t0))
