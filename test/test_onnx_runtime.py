"""``runtime: onnxruntime``: the image and BEV convolutions in onnxruntime, the rest in
torch. The reference is the eager model: the same detections on every frame of the
bundled drive, and with a modality missing."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from model_helpers import random_inputs

from aqr_perception.cli import DEFAULT_BAG
from aqr_perception.config import ConfigError, load_config
from aqr_perception.evaluation.answers import predict_offline
from aqr_perception.model.checkpoint import load_checkpoint
from aqr_perception.model.onnx_runtime import OnnxRuntimeDetector
from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, DetectorRuntime

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def runtimes():
    return DetectorRuntime(None, None, "cpu"), DetectorRuntime(None, None, "cpu", runtime="onnxruntime")


def test_same_detections_on_every_frame_of_the_bundled_drive(runtimes):
    eager, ort = runtimes
    cfg = load_config("tiny")
    a, b = predict_offline(DEFAULT_BAG, cfg, eager), predict_offline(DEFAULT_BAG, cfg, ort)
    assert a.keys() == b.keys() and len(a) >= 10
    total = 0
    for token in a:
        x, y = a[token], b[token]
        confident = x.scores >= 0.05                   # near the top-k cut a 1e-6 change may swap ranks
        assert x.names[: int(confident.sum())] == y.names[: int(confident.sum())]
        n = int(confident.sum())
        total += n
        assert np.allclose(x.scores[:n], y.scores[:n], atol=1e-4)
        assert np.allclose(x.boxes[:n], y.boxes[:n], atol=2e-3)               # metres, radians
        assert np.allclose(x.lidar_weight[:n], y.lidar_weight[:n], atol=1e-4)
    assert total > 50


@pytest.mark.parametrize("lidar,cams", [(False, 6), (True, 0), (True, 3)])
def test_a_missing_modality_gives_what_eager_gives(runtimes, lidar, cams):
    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    ort = runtimes[1]._forward
    valid = torch.zeros(1, 6, dtype=torch.bool)
    valid[0, :cams] = True
    inputs = random_inputs(model.cfg, points=3000, seed=2, lidar_valid=torch.tensor([lidar]), camera_valid=valid)
    with torch.inference_mode():
        want, got = model(inputs), ort(inputs)
    assert torch.allclose(got.cls_logits[-1], want.cls_logits[-1], atol=1e-4)
    assert torch.allclose(got.bbox_code[-1], want.bbox_code[-1], atol=1e-3)
    assert torch.equal(got.has_input, want.has_input)


def test_it_runs_on_the_cpu_only_and_in_inference():
    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    with pytest.raises(ValueError, match="inference"):
        OnnxRuntimeDetector(model.train(), 1)
    with pytest.raises(ConfigError, match="unknown runtime"):
        DetectorRuntime(None, None, "cpu", runtime="tensorrt")


def test_the_node_runs_it_when_asked(tmp_path):
    """``runtime:=onnxruntime`` through the node (eval replay over DDS) answers every sweep."""
    import json

    out = subprocess.run([sys.executable, "-m", "aqr_perception.cli", "eval", "--bag", str(DEFAULT_BAG),
                          "--set", "node.runtime=onnxruntime", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "(onnxruntime) loaded in" in out.stdout + out.stderr          # the node's own start-up line
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["frames"] == report["frames_with_output"] and report["NDS"] > 0.2


def test_the_dense_part_after_the_canvas_computes_the_eager_model():
    """``DenseDetector`` (what bench/model_gpu.py compiles and hands to TensorRT) from the
    canvas on, with the inverse calibration given: the eager model's outputs."""
    from aqr_perception.model.onnx_runtime import DenseDetector

    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    inputs = random_inputs(model.cfg, points=3000, seed=5)
    with torch.inference_mode():
        want = model(inputs)
        canvas = model.lidar.canvas(inputs.points)
        cls_logits, code, lw, cw = DenseDetector(model)(canvas, inputs.images, inputs.lidar2img,
                                                        torch.linalg.inv(inputs.lidar2img), inputs.camera_valid,
                                                        inputs.lidar_valid)
    assert torch.allclose(cls_logits, want.cls_logits[-1], atol=1e-5)
    assert torch.allclose(code, want.bbox_code[-1], atol=1e-4)
    assert torch.allclose(lw, want.lidar_weight, atol=1e-6) and torch.allclose(cw, want.camera_weight, atol=1e-6)


def test_the_dense_part_traces_as_one_graph():
    """bench/model_gpu.py compiles ``DenseDetector`` with CUDA graphs (``torch.compile``,
    mode "reduce-overhead"), which need one graph: dynamo traces it without a break."""
    from aqr_perception.model.onnx_runtime import DenseDetector

    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    inputs = random_inputs(model.cfg, points=3000, seed=6)
    with torch.inference_mode():
        canvas = model.lidar.canvas(inputs.points)
        explained = torch._dynamo.explain(DenseDetector(model))(
            canvas, inputs.images, inputs.lidar2img, torch.linalg.inv(inputs.lidar2img), inputs.camera_valid,
            inputs.lidar_valid)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        [r.reason for r in explained.break_reasons]
