"""The detector's convolutional branches on onnxruntime (``runtime: onnxruntime``).

The LiDAR encoder up to the BEV canvas (pillar scatter, or voxels and spconv) has
data-dependent shapes and stays in torch. The image branch (normalisation, backbone,
neck) and the BEV convolutions (SECOND, FPN, shared conv) have shapes fixed by the
config, export with ``torch.onnx`` (the dynamo exporter) and run in onnxruntime, about
3x faster than eager there on the 2-core dev machine; the position encodings, decoder
and heads stay in torch, whose segment attention beat the exported graph (the whole
graph in onnxruntime was slower than eager: its local-window gathers). Tiny model:
0.74x the eager latency at the same detections (``bench/runtime.py``).

:class:`DenseDetector` (everything after the canvas, one graph) serves ``torch.compile``
and TensorRT in ``bench/model_gpu.py``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from aqr_perception.model.detector import CmtAqrDetector, DetectorInputs, DetectorOutput


class ImageBranch(nn.Module):
    """images (1, V, 3, H, W) RGB 0-255 -> features (V, C, h, w): normalisation, backbone, neck."""

    def __init__(self, model: CmtAqrDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        m = self.model
        return m.img_neck(m.img_backbone(m.normalised_images(images)))


class LidarDense(nn.Module):
    """BEV canvas (1, C, H, W) -> memory features (1, C', Hb, Wb): SECOND, FPN, shared conv."""

    def __init__(self, model: CmtAqrDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, canvas: Tensor) -> Tensor:
        return self.model.lidar.dense(canvas)


class DenseDetector(nn.Module):
    """Everything after the BEV canvas as one graph (no data-dependent branch, no matrix
    inverse): canvas (1, C, H, W), images (1, V, 3, H, W), lidar2img and its inverse
    img2lidar (1, V, 4, 4), camera_valid (1, V), lidar_valid (1,) -> last-layer
    cls_logits (1, Q, ncls) and bbox_code (1, Q, 10), router weights (L, 1, Q)."""

    def __init__(self, model: CmtAqrDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, canvas: Tensor, images: Tensor, lidar2img: Tensor, img2lidar: Tensor, camera_valid: Tensor,
                lidar_valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        img = m.img_neck(m.img_backbone(m.normalised_images(images)))
        bev = m.lidar.dense(canvas)
        memory, pos, pad = m.assemble_memory(img, bev, lidar2img, camera_valid, lidar_valid, img2lidar)
        out = m.decode_queries(memory, pos, pad, lidar2img, camera_valid, lidar_valid, img2lidar=img2lidar)
        return out.cls_logits[-1], out.bbox_code[-1], out.lidar_weight, out.camera_weight


def _session(module: nn.Module, example: tuple[Tensor, ...], path: Path, names: list[str], threads: int):
    import onnxruntime

    with torch.no_grad():
        torch.onnx.export(module.eval(), example, str(path), dynamo=True, verbose=False, input_names=names)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    # onnxruntime's threads spin after a run by default, starving torch's threads that run next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeDetector:
    """Drop-in for ``CmtAqrDetector.__call__`` in inference (batch of one): the convolutional
    branches (images -> features, BEV canvas -> BEV features) in onnxruntime sessions made
    from the model at construction; points -> canvas, position encodings, decoder and heads
    in torch."""

    def __init__(self, model: CmtAqrDetector, threads: int) -> None:
        if model.training:
            raise ValueError("the onnxruntime path is for inference (model.eval())")
        self.model = model
        cfg = model.cfg
        t0 = time.perf_counter()
        v, (h, w) = cfg.num_views, (cfg.image.input_height, cfg.image.input_width)
        with torch.no_grad():
            canvas = model.lidar.canvas([torch.zeros(0, model.lidar.point_features)])
        with tempfile.TemporaryDirectory(prefix="aqr_onnx_") as tmp:
            self.image = _session(ImageBranch(model), (torch.zeros(1, v, 3, h, w),), Path(tmp) / "image.onnx",
                                  ["images"], threads)
            self.lidar = _session(LidarDense(model), (torch.zeros_like(canvas),), Path(tmp) / "lidar.onnx",
                                  ["canvas"], threads)
        self.export_s = time.perf_counter() - t0

    def __call__(self, inputs: DetectorInputs) -> DetectorOutput:
        if inputs.batch_size != 1:
            raise ValueError("the onnxruntime path runs one sample at a time")
        with torch.no_grad():
            return self.model.forward_with_branches(inputs, self._image, self._bev_dense)

    def _image(self, images: Tensor) -> Tensor:
        return torch.from_numpy(self.image.run(None, {"images": images.float().numpy()})[0])

    def _bev_dense(self, canvas: Tensor) -> Tensor:
        return torch.from_numpy(self.lidar.run(None, {"canvas": canvas.float().numpy()})[0])
