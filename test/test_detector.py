"""The detector as a whole: R50 structure, tiny forward/backward, missing modalities."""
from types import SimpleNamespace

import pytest
import torch
from model_helpers import HOST_READS, HostReadSpy, random_inputs

from aqr_perception.config import load_config
from aqr_perception.model import build_detector
from aqr_perception.model.resnet import ResNet


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_resnet50_trunk_matches_the_standard_parameter_count_and_names():
    net = ResNet(50, frozen_bn=False)
    # torchvision resnet50: 25,557,032 parameters, of which fc = 2048*1000 + 1000
    assert _count(net) == 25_557_032 - 2_049_000
    keys = set(net.state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
              "layer3.5.conv3.weight", "layer4.2.bn3.running_var"):
        assert k in keys, k
    assert _count(ResNet(18, frozen_bn=False)) == 11_689_512 - 513_000   # resnet18 minus fc


def test_r50_config_structure_and_parameter_counts():
    cfg = load_config("cmt_aqr_r50_800x320").model
    model = build_detector(cfg)
    c, ffn, heads_c = 256, 1024, 64
    # decoder layer: two attentions (4 C^2 + 4 C), FFN, three LayerNorms
    attn = 4 * c * c + 4 * c
    layer = 2 * attn + (c * ffn + ffn + ffn * c + c) + 3 * 2 * c
    assert len(model.decoder.layers) == 6
    assert _count(model.decoder.layers) == 6 * layer
    assert _count(model.decoder.post_norm) == 2 * c
    # one AQR router per layer: Linear(3C + 2 -> C), Linear(C -> 2)
    router = (3 * c + 2) * c + c + c * 2 + 2
    assert _count(model.decoder.routers) == 6 * router
    # position encoders: bev 512->256->256, rv 192->1024->256
    assert _count(model.position) == (512 * c + c + c * c + c) + (192 * 1024 + 1024 + 1024 * c + c)
    # heads: per branch Linear(C->64) + LN(64) + Linear(64->out); outs 2,1,3,2,2 + 10 classes
    branch = lambda out: c * heads_c + heads_c + 2 * heads_c + heads_c * out + out  # noqa: E731
    assert _count(model.heads) == sum(branch(o) for o in (2, 1, 3, 2, 2, 10))
    assert model.reference_points.weight.shape == (900, 3)
    # frozen BN keeps its affine parameters as buffers: same total as the standard trunk
    frozen = sum(m.weight.numel() + m.bias.numel() for m in model.img_backbone.modules()
                 if type(m).__name__ == "FrozenBatchNorm2d")
    assert _count(model.img_backbone) + frozen == 23_508_032
    assert all(not p.requires_grad or p.dim() > 1 for p in model.img_backbone.parameters())
    # memory: 32,400 BEV tokens + 6 x 20 x 50 image tokens (56,400 would be the 1600x640 variant)
    assert model.layout.num_bev == 32_400 and model.layout.num_keys == 32_400 + 6_000
    # lidar: 360x360 pillars -> 180x180 BEV
    assert (model.lidar.voxelizer.nx, model.lidar.voxelizer.ny) == (360, 360)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = load_config("tiny").model
    return cfg, build_detector(cfg).eval()


def test_tiny_forward_shapes_and_weights(tiny):
    cfg, model = tiny
    out = model(random_inputs(cfg, batch=2))
    L, Q = cfg.transformer.num_layers, cfg.transformer.num_queries
    assert out.cls_logits.shape == (L, 2, Q, 10) and out.bbox_code.shape == (L, 2, Q, 10)
    assert out.lidar_weight.shape == (L, 2, Q)
    assert torch.isfinite(out.cls_logits).all() and torch.isfinite(out.bbox_code).all()
    # router output starts near sigmoid(1.5) = 0.82 for every query
    assert (out.lidar_weight - torch.sigmoid(torch.tensor(1.5))).abs().max() < 0.02
    preds = model.predict(random_inputs(cfg, batch=1))
    det = preds[0].detections
    assert det.boxes.shape[1] == 9 and len(det.scores) <= cfg.decode.topk
    assert preds[0].lidar_weight.shape == (len(det.scores), L)


@pytest.mark.parametrize("case", ["no_lidar", "one_camera", "no_cameras", "nothing"])
def test_missing_modalities_give_finite_outputs(tiny, case):
    cfg, model = tiny
    lidar = torch.tensor([case not in ("no_lidar", "nothing")])
    cams = torch.ones(1, 6, dtype=torch.bool)
    if case == "one_camera":
        cams[0, 2] = False
    if case in ("no_cameras", "nothing"):
        cams[:] = False
    inputs = random_inputs(cfg, lidar_valid=lidar, camera_valid=cams)
    out = model(inputs)
    assert torch.isfinite(out.cls_logits).all() and torch.isfinite(out.bbox_code).all()
    assert torch.isfinite(out.lidar_weight).all() and torch.isfinite(out.camera_weight).all()
    pred = model.predict(inputs)[0]
    assert pred.has_input == (case != "nothing")
    if case == "nothing":
        assert len(pred.detections.scores) == 0


def test_masked_camera_does_not_influence_the_output(tiny):
    # the keys of a masked view carry no information: changing its pixels changes nothing
    cfg, model = tiny
    cams = torch.ones(1, 6, dtype=torch.bool)
    cams[0, 4] = False
    a = random_inputs(cfg, camera_valid=cams)
    b = random_inputs(cfg, camera_valid=cams)
    b.images[0, 4] = torch.rand_like(b.images[0, 4]) * 255
    torch.testing.assert_close(model(a).cls_logits, model(b).cls_logits)
    c = random_inputs(cfg, camera_valid=torch.ones(1, 6, dtype=torch.bool))
    c.images[0, 4] = b.images[0, 4]
    assert not torch.allclose(model(a).cls_logits, model(c).cls_logits)


def test_gradients_reach_router_and_both_branches():
    torch.manual_seed(0)
    cfg = load_config("tiny", overrides=["model.image.frozen_bn=false"]).model
    model = build_detector(cfg).train()
    gt_boxes = [torch.tensor([[5.0, 3.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0]])]
    gt_labels = [torch.tensor([0])]
    out = model(random_inputs(cfg), gt_boxes, gt_labels)
    from aqr_perception.model.losses import detection_loss
    detection_loss(out, gt_boxes, gt_labels, cfg).total.backward()
    for name, module in [("router", model.decoder.routers[0]), ("image", model.img_neck),
                         ("lidar", model.lidar.pfn), ("reference", model.reference_points)]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_aqr_disabled_is_plain_cmt():
    cfg = load_config("tiny", overrides=["model.aqr.enabled=false"]).model
    model = build_detector(cfg).eval()
    assert len(model.decoder.routers) == 0
    out = model(random_inputs(cfg))
    assert torch.all(out.lidar_weight == 0.5)


def test_fixed_router_is_the_learned_one_held_at_its_initial_weights():
    """router=fixed: no router parameters; the window bias of constant weights sigmoid(init_logit),
    i.e. exactly a learned router whose output layer is zero (weights = its init bias)."""
    torch.manual_seed(0)
    learned_cfg = load_config("tiny").model
    learned = build_detector(learned_cfg).eval()
    for r in learned.decoder.routers:
        torch.nn.init.zeros_(r.mlp[-1].weight)
    fixed = build_detector(load_config("tiny", overrides=["model.aqr.router=fixed"]).model).eval()
    assert len(fixed.decoder.routers) == 0
    missing = fixed.load_state_dict(learned.state_dict(), strict=False)
    assert not missing.missing_keys and all(k.startswith("decoder.routers.") for k in missing.unexpected_keys)
    plain = build_detector(load_config("tiny", overrides=["model.aqr.enabled=false"]).model).eval()
    plain.load_state_dict(fixed.state_dict())
    inputs = random_inputs(learned_cfg)
    with torch.no_grad():
        a, b, c = learned(inputs), fixed(inputs), plain(inputs)
    assert torch.allclose(b.lidar_weight, torch.sigmoid(torch.tensor(learned_cfg.aqr.init_logit)))
    assert torch.allclose(a.cls_logits, b.cls_logits, atol=1e-5)
    assert not torch.allclose(b.cls_logits, c.cls_logits, atol=1e-3)   # the bias is still there


def test_runtime_checkpoint_choice():
    """Empty checkpoint: the bundled trained model; "none": untrained weights built from the
    given config (what benchmarks ask for), whatever is bundled."""
    from aqr_perception.config import config_from_dict, config_to_dict
    from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, UNTRAINED, DetectorRuntime

    raw = config_to_dict(load_config("tiny"))
    raw["model"]["name"] = "a_smaller_one"
    raw["model"]["transformer"]["num_queries"] = 37
    small = config_from_dict(raw, "test").model
    untrained = DetectorRuntime(UNTRAINED, small, "cpu")
    assert not untrained.trained and untrained.cfg.name == "a_smaller_one"
    assert untrained.model.reference_points.weight.shape[0] == 37
    bundled = DetectorRuntime(None, small, "cpu")
    assert bundled.trained and bundled.checkpoint == str(BUNDLED_CHECKPOINT)
    assert bundled.cfg.transformer.num_queries != 37


@pytest.mark.parametrize("camera_valid", [[True] * 6, [True, False, True, True, False, True]])
def test_bundled_model_gives_the_same_outputs_with_fused_and_dense_attention(camera_valid):
    """The node's inference route (fused attention without autograd) against the dense
    reference, on the trained weights (realistic router outputs), with and without a
    missing camera."""
    from aqr_perception.model.runtime import DetectorRuntime

    model = DetectorRuntime(None, None, "cpu").model
    inputs = random_inputs(model.cfg, camera_valid=torch.tensor([camera_valid]))
    outs = {}
    for impl in ("dense", "fused"):
        model.decoder.impl = impl
        with torch.inference_mode():
            outs[impl] = model(inputs)
    model.decoder.impl = model.cfg.attention
    for name in ("cls_logits", "bbox_code", "lidar_weight", "camera_weight"):
        torch.testing.assert_close(getattr(outs["fused"], name), getattr(outs["dense"], name), atol=1e-4, rtol=1e-4)


def test_runtime_cpu_threads():
    from aqr_perception.model.runtime import UNTRAINED, DetectorRuntime

    before = torch.get_num_threads()
    try:
        rt = DetectorRuntime(UNTRAINED, load_config("tiny").model, "cpu", cpu_threads=1)
        assert torch.get_num_threads() == 1 and rt.cpu_threads == 1
    finally:
        torch.set_num_threads(before)


def test_runtime_warm_up_runs_the_model_once_without_state_change():
    from aqr_perception.model.runtime import UNTRAINED, DetectorRuntime

    rt = DetectorRuntime(UNTRAINED, load_config("tiny").model, "cpu")
    calls = []
    rt.model.register_forward_hook(lambda module, args, out: calls.append(args[0]))
    before = {k: v.clone() for k, v in rt.model.state_dict().items()}
    ms = rt.warm_up()
    assert len(calls) == 1 and ms > 0 and not rt.model.training
    inputs = calls[0]
    assert bool(inputs.lidar_valid.all()) and bool(inputs.camera_valid.all()) and len(inputs.points[0]) > 0
    assert all(torch.equal(before[k], v) for k, v in rt.model.state_dict().items())


def _runtime_sample(rt):
    """ModelArrays-like input for ``rt.infer``: 500 points within 20 m, six black views."""
    import numpy as np

    (h, w), v = rt.input_hw, rt.cfg.num_views
    rng = np.random.default_rng(0)
    return SimpleNamespace(points=rng.uniform(-20, 20, (500, 4)).astype(np.float32),
                           images=np.zeros((v, 3, h, w), np.uint8),
                           lidar2img=np.tile(np.eye(4, dtype=np.float32), (v, 1, 1)),
                           camera_valid=np.ones(v, dtype=bool), lidar_valid=True)


def test_a_nan_inside_the_decoder_reaches_the_runtime_check():
    """Nothing in the forward pass launders NaNs: a diverged decoder weight makes the frame a
    ModelOutputError (counted by the node), not finite garbage."""
    from aqr_perception.model.runtime import DetectorRuntime, ModelOutputError

    rt = DetectorRuntime(None, None, "cpu")
    arrays = _runtime_sample(rt)
    rt.infer(arrays)                                         # finite with the trained weights
    ffn = next(p for n, p in rt.model.decoder.named_parameters() if n.endswith("weight") and p.dim() == 2)
    with torch.no_grad():
        ffn[0, 0] = float("nan")
    with pytest.raises(ModelOutputError):
        rt.infer(arrays)


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_trunk_computes_what_timm_resnet_computes(depth):
    """C4 and C5 of our ResNet (basic and bottleneck blocks, stride on the 3x3 as in timm's
    default ResNet-B) equal timm's ``resnet{depth}`` features with the same weights and
    random BatchNorm statistics; the stem's relu after the max pool included."""
    from model_helpers import randomise_batchnorm
    from timm_reference import timm_vovnet

    ref = timm_vovnet(f"resnet{depth}", features_only=True, out_indices=(3, 4))
    gen = torch.Generator().manual_seed(depth)
    with torch.no_grad():
        randomise_batchnorm(ref, torch.nn.BatchNorm2d, gen, 0.1)
    ours = ResNet(depth, frozen_bn=False).eval()
    state = {k: v for k, v in ref.state_dict().items()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not missing and not [k for k in unexpected if not k.endswith("num_batches_tracked")], (missing,
                                                                                                     unexpected)
    x = torch.randn(2, 3, 96, 160, generator=gen)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert len(want) == len(got) == 2
    for w, o in zip(want, got):
        assert o.shape == w.shape and torch.allclose(o, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("route", ["segment", "folded"])
def test_the_detector_hands_the_attention_its_padding_per_segment(mode, route, segment_padding_checks):
    """The detector builds the key padding from lidar_valid / camera_valid and hands it to
    the attention per segment, so the routes that need it per segment never check the key
    padding for it (a host sync per layer on CUDA); the outputs equal the dense reference,
    with a camera missing in one sample and the LiDAR in the other."""
    from aqr_perception.model import fused_attention

    cfg = load_config("tiny").model
    cfg = cfg.model_copy(update={"aqr": cfg.aqr.model_copy(update={"mode": mode})})
    torch.manual_seed(3)
    model = build_detector(cfg).eval()
    camera_valid = torch.ones(2, cfg.num_views, dtype=torch.bool)
    camera_valid[0, 2] = False
    inputs = random_inputs(cfg, batch=2, lidar_valid=torch.tensor([True, False]), camera_valid=camera_valid)
    checks = segment_padding_checks
    outs = {}
    for impl in ("dense", "fused"):
        model.decoder.impl = impl
        with torch.no_grad(), fused_attention.forced_route(route), fused_attention.observed_routes() as seen:
            outs[impl] = model(inputs)
    assert seen == {route: cfg.transformer.num_layers} and not checks
    for name in ("cls_logits", "bbox_code", "lidar_weight", "camera_weight"):
        torch.testing.assert_close(getattr(outs["fused"], name), getattr(outs["dense"], name), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("forward", ["forward", "forward_with_branches"])
def test_the_flags_are_read_before_any_branch_and_the_image_branch_queues_without_a_read(forward):
    """On CUDA a host read of a tensor waits for all the work queued before it, and so does
    the LiDAR branch's voxelisation: the detector reads both modality flags before any
    branch runs, runs the LiDAR branch first, and reads nothing on the host (HOST_READS)
    from the image backbone's start to the decoder's (fails on the order image branch,
    flag, LiDAR branch)."""
    cfg = load_config("tiny").model
    torch.manual_seed(4)
    model = build_detector(cfg).eval()
    inputs = random_inputs(cfg, batch=2)
    spy = HostReadSpy()
    for name in ("lidar.voxelizer", "img_backbone", "decoder"):
        model.get_submodule(name).register_forward_pre_hook(lambda m, a, name=name: spy.events.append(name))
    with torch.no_grad(), spy:
        if forward == "forward":
            model(inputs)
        else:
            model.forward_with_branches(inputs, model.image_branch, model.lidar.dense)
    events = ["read" if e in HOST_READS or e == "mask" else e for e in spy.events]
    lidar, image, decoder = (events.index(n) for n in ("lidar.voxelizer", "img_backbone", "decoder"))
    assert events[:2] == ["read", "read"] and lidar < image < decoder
    assert "read" not in events[image:decoder]


def test_the_host_decode_equals_the_detector_decode():
    """model/host_decode.py's one-copy decode gives what ``CmtAqrDetector.decode`` gives, sample
    by sample: a sample without input decodes to nothing, and the threshold and range filters
    drop the same candidates (some are dropped, some kept)."""
    import numpy as np

    from aqr_perception.model.host_decode import decode_to_host

    cfg = load_config("tiny").model
    torch.manual_seed(5)
    model = build_detector(cfg).eval()
    camera_valid = torch.ones(3, cfg.num_views, dtype=torch.bool)
    camera_valid[1] = False
    inputs = random_inputs(cfg, batch=3, lidar_valid=torch.tensor([True, False, True]), camera_valid=camera_valid)
    with torch.no_grad():
        out = model(inputs)
    scores = out.cls_logits[-1, 0].sigmoid().flatten().topk(cfg.decode.topk).values
    decode = cfg.decode.model_copy(update={"score_threshold": float(scores.median()),
                                           "post_center_range": [-20.0, -61.2, -10.0, 61.2, 61.2, 10.0]})
    model.cfg = model.cfg.model_copy(update={"decode": decode})
    expected, host = model.decode(out), decode_to_host(out, decode)
    assert host.finite and host.has_input.tolist() == [True, False, True]
    assert len(host.frames[1]) == 0
    for want, got in zip(expected, host.frames):
        d = want.detections
        assert got.labels.dtype == np.int64 and got.query_index.dtype == np.int64
        np.testing.assert_array_equal(got.boxes, d.boxes.numpy())
        np.testing.assert_array_equal(got.scores, d.scores.numpy())
        np.testing.assert_array_equal(got.labels, d.labels.numpy())
        np.testing.assert_array_equal(got.query_index, d.query_index.numpy())
        np.testing.assert_array_equal(got.lidar_weight, want.lidar_weight.numpy())
        np.testing.assert_array_equal(got.camera_weight, want.camera_weight.numpy())
    assert 0 < len(host.frames[0]) < cfg.decode.topk and 0 < len(host.frames[2]) < cfg.decode.topk


def test_the_runtime_brings_its_result_to_the_host_in_one_copy():
    """After the decoder, ``DetectorRuntime.infer`` reads the device once: one ``cpu()`` and
    its ``numpy()``, no flag read, no boolean-mask index and no new tensor from host values
    (on CUDA each is a wait for the GPU; the previous decode made ~10). Fails with
    ``decode`` + per-array copies, and with a range tensor in ``topk_candidates``."""
    from aqr_perception.model.runtime import DetectorRuntime

    rt = DetectorRuntime(None, None, "cpu")
    arrays = _runtime_sample(rt)
    spy = HostReadSpy(from_host=True)
    rt.model.decoder.register_forward_hook(lambda m, a, o: spy.events.append("decoder done"))
    with spy:
        pred = rt.infer(arrays)
    assert len(pred.detections) > 0 and pred.has_input
    assert spy.events[spy.events.index("decoder done") + 1:] == ["cpu", "numpy"]
