"""``runtime: torch_bf16``: the image and BEV convolutions in bfloat16, the rest fp32. The
reference is the eager fp32 model: the same detections on the bundled drive within what
bf16's 8-bit mantissa moves (scores by hundredths, boxes by centimetres), on any CPU
(oneDNN emulates bf16 where the CPU lacks it)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from model_helpers import random_inputs

from aqr_perception.cli import DEFAULT_BAG
from aqr_perception.config import load_config
from aqr_perception.evaluation.answers import predict_offline
from aqr_perception.evaluation.compare import match_detections
from aqr_perception.model.bf16_runtime import Bf16BranchDetector, native_bf16_cpu
from aqr_perception.model.checkpoint import load_checkpoint
from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, DetectorRuntime

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def runtimes():
    return DetectorRuntime(None, None, "cpu"), DetectorRuntime(None, None, "cpu", runtime="torch_bf16")


def test_same_detections_on_the_bundled_drive_within_bf16_rounding(runtimes):
    """Every eager detection scoring >= 0.1 has a bf16 one of the same class within 0.5 m
    (one-to-one, Hungarian on centre distance), with sizes and score close. Ranks
    are not compared: bf16 reorders detections of similar scores. Measured: 1,276 of them,
    all matched, centre/size difference <= 0.11 m, score <= 0.008."""
    eager, bf16 = runtimes
    cfg = load_config("tiny")
    a, b = predict_offline(DEFAULT_BAG, cfg, eager), predict_offline(DEFAULT_BAG, cfg, bf16)
    assert a.keys() == b.keys() and len(a) >= 10
    match = match_detections(a, b, confident=0.1, near_m=0.5)
    print(match.summary())
    assert match.total > 500 and match.unmatched == 0, match.unmatched_frames
    assert match.box_diff[:, 3:6].max() <= 0.5                                    # l, w, h in metres
    diffs = match.score_diff
    assert diffs.max() <= 0.06 and diffs.mean() <= 0.01, (diffs.max(), diffs.mean())


def test_only_the_convolutions_are_bf16_and_the_outputs_fp32(runtimes):
    model = runtimes[1].model
    converted = ("img_backbone.", "img_neck.", "lidar.backbone.", "lidar.neck.", "lidar.shared_conv.")
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert any(name.startswith("lidar.") and not name.startswith(converted) for name in dtypes)  # pillar net
    for name, dtype in dtypes.items():
        assert dtype == (torch.bfloat16 if name.startswith(converted) else torch.float32), name
    inputs = random_inputs(model.cfg, points=3000, seed=4)
    with torch.inference_mode():
        out = runtimes[1]._forward(inputs)
    assert out.cls_logits.dtype == torch.float32 and torch.isfinite(out.cls_logits).all()


@pytest.mark.parametrize("lidar,cams", [(False, 6), (True, 0), (True, 3)])
def test_a_missing_modality_gives_what_eager_gives(lidar, cams):
    """The branch of a missing modality is skipped (zeros) as in eager; the rest within bf16 rounding."""
    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    eager, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    bf16 = Bf16BranchDetector(model)
    valid = torch.zeros(1, 6, dtype=torch.bool)
    valid[0, :cams] = True
    inputs = random_inputs(model.cfg, points=3000, seed=2, lidar_valid=torch.tensor([lidar]), camera_valid=valid)
    with torch.inference_mode():
        want, got = eager(inputs), bf16(inputs)
    assert torch.equal(got.has_input, want.has_input)
    scores_want, scores_got = want.cls_logits[-1].sigmoid(), got.cls_logits[-1].sigmoid()
    assert (scores_got - scores_want).abs().max() <= 0.05
    assert (got.lidar_weight - want.lidar_weight).abs().max() <= 0.05


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert native_bf16_cpu(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n")
    assert not native_bf16_cpu(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse amx_tile amx_bf16 amx_int8\n")
    assert native_bf16_cpu(info)
    info.write_text("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\n")  # aarch64
    assert native_bf16_cpu(info)
    info.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n")
    assert not native_bf16_cpu(info)
    assert not native_bf16_cpu(tmp_path / "missing")


def test_the_node_runs_it_when_asked():
    """``-p runtime:=torch_bf16`` on the node: its runtime converts the convolutions and
    answers the warm-up frame (the call every frame makes)."""
    case = textwrap.dedent("""
        from aqr_perception.ros.dds_env import apply_loopback_dds_defaults
        apply_loopback_dds_defaults()
        import rclpy, torch
        from aqr_perception.ros.node import AqrPerceptionNode, start_node
        rclpy.init()
        node = AqrPerceptionNode(cli_args=["--ros-args", "-p", "runtime:=torch_bf16"])
        start_node(node)
        rt = node.runtime
        print("RUNTIME", rt.runtime, next(rt.model.img_backbone.parameters()).dtype, rt.warm_up() > 0)
    """)
    out = subprocess.run([sys.executable, "-c", case], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "RUNTIME torch_bf16 torch.bfloat16 True" in out.stdout
    assert "(torch_bf16) loaded in" in out.stdout + out.stderr          # the node's own start-up line



def _batchnorms(module):
    from aqr_perception.model.resnet import FrozenBatchNorm2d

    return sum(isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)) for m in module.modules())


@pytest.mark.parametrize("config", ["tiny", "cmt_aqr_r50_800x320", "cmt_aqr_vov_1600x640"])
def test_batchnorm_folding_computes_the_same(config):
    """fold_batchnorm (applied before the bf16 cast) folds every BatchNorm, each following a
    Conv2d or (the FPN's deblocks) a ConvTranspose2d, and computes what the modules did:
    ResNet basic (tiny) and bottleneck (R50) blocks, VoVNet, SECOND + FPN + shared conv, with
    random BN statistics so that a wrong fold shows."""
    import copy

    from aqr_perception.model.bf16_runtime import fold_batchnorm
    from aqr_perception.model.detector import CmtAqrDetector
    from aqr_perception.model.resnet import FrozenBatchNorm2d

    torch.manual_seed(0)                      # the weights: the same case whatever ran before
    model = CmtAqrDetector(load_config(config).model).eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.5)
    g = torch.Generator().manual_seed(1)
    lidar = model.lidar
    lidar_in = lidar.backbone.blocks[0][0].in_channels if hasattr(lidar.backbone, "blocks") else None
    cases = [("img_backbone", torch.randn(2, 3, 64, 96, generator=g))]
    if config == "tiny":
        cases.append(("lidar", torch.randn(1, lidar_in, 64, 64, generator=g)))
    for name, x in cases:
        module = model.get_submodule(name)
        module = module.double()                  # fp64: VoVNet's depth with random BNs amplifies fp32 rounding
        x = x.double()
        folded = copy.deepcopy(module)
        before = _batchnorms(module)
        assert before > 0 and fold_batchnorm(folded) == before and _batchnorms(folded) == 0, name
        with torch.no_grad():
            want = module(x) if name != "lidar" else module.dense(x)
            got = folded(x) if name != "lidar" else folded.dense(x)
        for w, o in zip(want if isinstance(want, (list, tuple)) else [want], got if isinstance(got, (list, tuple))
                        else [got]):
            assert w.abs().max() > 0, name
            err = float((o - w).abs().max() / w.abs().max())       # random BNs grow activations: relative
            assert err <= 1e-6, (name, err)          # measured <= 6e-9; a wrong fold is O(0.1)
