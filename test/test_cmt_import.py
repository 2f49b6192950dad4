"""The published CMT weights: every official key mapped, the layouts converted, the
heads and decoder computing what CMT's code computes, and AQR neutral at import.

The official file is not here: ``cmt_voxel0075_vov_1600x640.keys.json`` lists the
state_dict keys and shapes of the official model (derived from the public model
definition; see its header), and the tests fill them with random values. The
references below are written from the official code's definitions (grouped Conv1d +
GroupLayerNorm1d heads and their slot reading, mmcv's post-norm decoder layer with
``nn.MultiheadAttention``), not from ours.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import spconv.pytorch as sp
import torch
from cmt_fixture import CLASSES, HEAD, SMALL, VOV, fixture_state_dict, write_official_file
from einops import rearrange
from model_helpers import random_inputs
from torch import nn
from torch.nn import functional as F

from aqr_perception.config import load_config
from aqr_perception.model import build_detector
from aqr_perception.model.box_coder import decode_boxes
from aqr_perception.model.checkpoint import load_checkpoint
from aqr_perception.model.cmt_import import import_state_dict, map_key, spconv1_to_spconv2

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return fixture_state_dict()


@pytest.fixture(scope="module")
def imported(official):
    model = build_detector(load_config(VOV, SMALL).model)
    report = import_state_dict(model, official, ["aqr"])
    return model.eval(), report


def test_every_official_key_maps_and_every_weight_of_ours_is_filled(imported, official):
    model, rep = imported
    assert len(official) == 997
    assert rep.ok and not rep.unmatched and not rep.unknown_target and not rep.shape_mismatch and not rep.missing
    assert rep.loaded + len(rep.dropped) == len(official)
    # the only official keys without a home: the frozen VoVNet BatchNorms' counters
    assert all(k.startswith("img_backbone.") and k.endswith("num_batches_tracked") for k in rep.dropped)
    assert len(rep.dropped) == 3 + 16 * 6                  # stem + (5 layers + concat) per OSA block
    ours = model.state_dict()
    assert sorted(rep.left_at_init) == sorted(k for k in ours if k.startswith("decoder.routers."))
    assert rep.loaded + len(rep.left_at_init) == len(ours)
    assert rep.conversions == {"spconv1->spconv2": 21, "grouped->per-layer": 6 * 5}


def test_without_allow_missing_the_router_gap_is_refused_by_name(official):
    model = build_detector(load_config(VOV, SMALL).model)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("reference_points")}
    rep = import_state_dict(model, official)
    assert not rep.ok and rep.loaded == 0
    assert len(rep.missing) == 6 * 4 and all(k.startswith("decoder.routers.") for k in rep.missing)
    assert "decoder.routers.0.mlp.0.weight" in rep.problems()[0]
    assert torch.equal(model.state_dict()["reference_points.weight"], before["reference_points.weight"])


def test_unknown_keys_and_wrong_shapes_are_named(official):
    bad = dict(official)
    bad["pts_bbox_head.query_embedding.weight"] = torch.zeros(900, 256)     # no rule maps it
    bad["pts_bbox_head.transformer.decoder.foo.weight"] = torch.zeros(3)    # no rule maps it
    bad[HEAD + "rv_embedding.0.weight"] = torch.zeros(1024, 96)             # 32 depths instead of 64
    rep = import_state_dict(build_detector(load_config(VOV, SMALL).model), bad, ["aqr"])
    assert sorted(rep.unmatched) == ["pts_bbox_head.query_embedding.weight",
                                     "pts_bbox_head.transformer.decoder.foo.weight"]
    assert len(rep.shape_mismatch) == 1 and "rv_embedding.0.weight" in rep.shape_mismatch[0]
    assert "(1024, 96)" in rep.shape_mismatch[0] and "(1024, 192)" in rep.shape_mismatch[0]


@pytest.mark.parametrize("official_key,ours", [
    ("img_backbone.stem.stem_3/norm.running_var", "img_backbone.stem.2.bn.running_var"),
    ("img_backbone.stage2.OSA2_1.layers.0.OSA2_1_0/conv.weight",
     "img_backbone.stages.0.blocks.0.layers.0.conv.weight"),
    ("img_backbone.stage4.OSA4_7.layers.3.OSA4_7_3/norm.weight",
     "img_backbone.stages.2.blocks.6.layers.3.bn.weight"),
    ("img_backbone.stage5.OSA5_3.concat.OSA5_3_concat/conv.weight",
     "img_backbone.stages.3.blocks.2.concat.conv.weight"),
    ("img_backbone.stage3.OSA3_2.ese.fc.bias", "img_backbone.stages.1.blocks.1.ese.fc.bias"),
    ("img_neck.lateral_convs.1.conv.weight", "img_neck.lateral_convs.1.weight"),
    ("pts_middle_encoder.encoder_layers.encoder_layer3.2.0.weight",
     "lidar.middle.encoder_layers.encoder_layer3.2.0.weight"),
    ("pts_bbox_head.shared_conv.bn.running_mean", "lidar.shared_conv.1.running_mean"),
    ("pts_bbox_head.transformer.decoder.layers.5.attentions.1.attn.in_proj_weight",
     "decoder.layers.5.cross_attn.in_proj_weight"),
    ("pts_bbox_head.transformer.decoder.layers.2.ffns.0.layers.1.bias", "decoder.layers.2.ffn.3.bias"),
    ("pts_bbox_head.task_heads.0.cls_logits.3.bias", "heads.cls.3.bias"),
    ("pts_bbox_head.task_heads.0.height.1.weight", "heads.branches.height.1.weight"),
    ("module.pts_bbox_head.reference_points.weight", "reference_points.weight"),
])
def test_key_names_spelled_out(official_key, ours):
    assert map_key(official_key) == ours


def test_values_land_where_the_names_say(imported, official):
    model, _ = imported
    ours = model.state_dict()
    assert torch.equal(ours["img_backbone.stages.2.blocks.6.layers.3.conv.weight"],
                       official["img_backbone.stage4.OSA4_7.layers.3.OSA4_7_3/conv.weight"])
    assert torch.equal(ours["decoder.layers.5.cross_attn.in_proj_weight"],
                       official[HEAD + "transformer.decoder.layers.5.attentions.1.attn.in_proj_weight"])
    # grouped Conv1d rows g*64..(g+1)*64 are decoder layer g's
    w = official[HEAD + "task_heads.0.rot.0.weight"]                       # (6*64, 256, 1)
    assert torch.equal(ours["heads.branches.rot.0.weight"][4], w[4 * 64:5 * 64, :, 0])


def test_spconv1_kernel_orientation_on_a_hand_made_case():
    """spconv 1 / mmdet3d: weight[kd, kh, kw, cin, cout], out[p] += w[k] in[p + k - pad]
    (a cross-correlation, as torch's conv3d). A single tap at k = (0, 1, 2) of a 3x3x3
    kernel reads the neighbour at offset (-1, 0, +1)."""
    w1 = torch.zeros(3, 3, 3, 2, 4)
    w1[0, 1, 2, 1, 3] = 2.0                                   # cin 1 -> cout 3
    conv = sp.SubMConv3d(2, 4, 3, 1, 1, bias=False)
    conv.weight.data = spconv1_to_spconv2(w1)
    p, q = (3, 3, 3), (2, 3, 4)                               # q = p + (-1, 0, +1)
    coords = torch.tensor([[0, *p], [0, *q], [0, 5, 1, 1]], dtype=torch.int32)
    feats = torch.tensor([[0.0, 10.0], [0.0, 7.0], [0.0, 100.0]])
    out = conv(sp.SparseConvTensor(feats, coords, [8, 8, 8], 1))
    got = {tuple(c[1:].tolist()): f for c, f in zip(out.indices, out.features)}
    assert torch.equal(got[p], torch.tensor([0.0, 0.0, 0.0, 14.0]))       # 2 * in[q]
    assert torch.equal(got[q], torch.zeros(4)) and torch.equal(got[(5, 1, 1)], torch.zeros(4))


def test_the_spconv2_layout_is_taken_as_it_is(official):
    """A checkpoint written by spconv 2 (CMT's README environment) holds (Cout, k, k, k, Cin)."""
    as_spconv2 = {k: spconv1_to_spconv2(v) if v.dim() == 5 else v for k, v in official.items()}
    a = build_detector(load_config(VOV, SMALL).model)
    b = build_detector(load_config(VOV, SMALL).model)
    ra, rb = import_state_dict(a, official, ["aqr"]), import_state_dict(b, as_spconv2, ["aqr"])
    assert ra.ok and rb.ok and "spconv1->spconv2" not in rb.conversions
    key = "lidar.middle.conv_input.0.weight"
    assert a.state_dict()[key].shape == (16, 3, 3, 3, 5)
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])


# ------------------------------------------------------------------ references of CMT's code
def cmt_task_heads(sd: dict, feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """CMT's SeparateTaskHead: ``n b q c -> b (n c) q``, per head Conv1d(groups=L, no bias),
    GroupLayerNorm1d (per group over its 64 channels, biased variance, eps 1e-6), ReLU,
    Conv1d(groups=L), back to ``n b q c``."""
    n, b, q, _ = feats.shape
    x = rearrange(feats, "n b q c -> b (n c) q")
    out = {}
    for head in ("center", "height", "dim", "rot", "vel", "cls_logits"):
        p = f"{HEAD}task_heads.0.{head}."
        y = F.conv1d(x, sd[p + "0.weight"], groups=n)
        g = y.view(b, n, -1, q)
        g = (g - g.mean(2, keepdim=True)) / ((g - g.mean(2, keepdim=True)).pow(2).mean(2, keepdim=True) + 1e-6).sqrt()
        y = g.reshape(b, -1, q) * sd[p + "1.weight"][None, :, None] + sd[p + "1.bias"][None, :, None]
        y = F.conv1d(y.relu(), sd[p + "3.weight"], sd[p + "3.bias"], groups=n)
        out[head] = rearrange(y, "b (n c) q -> n b q c", n=n)
    return out


def cmt_boxes(outs: dict, ref: torch.Tensor, pc_range: list[float]) -> torch.Tensor:
    """CMT's forward_single + MultiTaskBBoxCoder reading of the slots:
    [cx, cy, hz, dim0, dim1, dim2, rot0, rot1, vel] read as normalize_bbox's
    (cx, cy, log dx, log dy, cz, log dz, sin, cos, vx, vy)."""
    logit = torch.log(ref.clamp(1e-5, 1) / (1 - ref).clamp(1e-5, 1))[None]
    lo, hi = torch.tensor(pc_range[:3]), torch.tensor(pc_range[3:])
    c = (outs["center"] + logit[..., :2]).sigmoid() * (hi[:2] - lo[:2]) + lo[:2]
    h = (outs["height"] + logit[..., 2:3]).sigmoid() * (hi[2] - lo[2]) + lo[2]
    s = torch.cat([c, h, outs["dim"], outs["rot"], outs["vel"]], dim=-1)
    return torch.stack([s[..., 0], s[..., 1], s[..., 4], s[..., 2].exp(), s[..., 3].exp(), s[..., 5].exp(),
                        torch.atan2(s[..., 6], s[..., 7]), s[..., 8], s[..., 9]], dim=-1)


def test_heads_compute_cmt_grouped_heads_and_its_slot_reading(imported, official):
    model, _ = imported
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(6, 2, 40, 256, generator=g)
    ref = torch.rand(2, 40, 3, generator=g)
    with torch.no_grad():
        logits, code = model.heads(feats, ref)
        want = cmt_task_heads(official, feats)
    assert torch.allclose(logits, want["cls_logits"], atol=1e-5)
    assert torch.allclose(decode_boxes(code), cmt_boxes(want, ref, model.cfg.point_cloud_range), atol=1e-4)


def test_decoder_is_mmcv_post_norm_layers_with_post_norm_not_fed_back(imported, official):
    model, _ = imported
    g = torch.Generator().manual_seed(6)
    b, t, k, c = 2, 30, 80, 256
    qpos, mem, kpos = torch.randn(b, t, c, generator=g), torch.randn(b, k, c, generator=g), \
        torch.randn(b, k, c, generator=g)

    def mha(prefix: str) -> nn.MultiheadAttention:
        m = nn.MultiheadAttention(c, 8)                 # mmcv's: sequence first
        m.load_state_dict({n: official[prefix + n] for n in ("in_proj_weight", "in_proj_bias", "out_proj.weight",
                                                             "out_proj.bias")})
        return m.eval()

    def ln(prefix: str) -> nn.LayerNorm:
        m = nn.LayerNorm(c)
        m.load_state_dict({"weight": official[prefix + "weight"], "bias": official[prefix + "bias"]})
        return m

    with torch.no_grad():
        x, kp, m_, qp = torch.zeros(t, b, c), (mem + kpos).transpose(0, 1), mem.transpose(0, 1), qpos.transpose(0, 1)
        want = []
        for i in range(6):
            p = f"{HEAD}transformer.decoder.layers.{i}."
            x = ln(p + "norms.0.")(x + mha(p + "attentions.0.attn.")(x + qp, x + qp, x)[0])
            x = ln(p + "norms.1.")(x + mha(p + "attentions.1.attn.")(x + qp, kp, m_)[0])
            ffn = p + "ffns.0.layers."
            f = F.linear(F.linear(x, official[ffn + "0.0.weight"], official[ffn + "0.0.bias"]).relu(),
                         official[ffn + "1.weight"], official[ffn + "1.bias"])
            x = ln(p + "norms.2.")(x + f)
            want.append(ln(f"{HEAD}transformer.decoder.post_norm.")(x).transpose(0, 1))
        plain = build_detector(load_config(VOV, SMALL + ["model.aqr.enabled=false"]).model).eval()
        assert import_state_dict(plain, official).ok
        got = plain.decoder(qpos, mem, kpos, plain.layout, None, None, None, torch.ones(b, dtype=torch.bool),
                            torch.ones(b, t, dtype=torch.bool)).features
    assert torch.allclose(got, torch.stack(want), atol=1e-4)


#: half the range per axis (a 90x90 BEV for 180x180, the same weights): a quarter of the BEV keys and convolutions
HALF_RANGE = ["model.point_cloud_range=[-27.0,-27.0,-5.0,27.0,27.0,3.0]", "model.bev_size=90"]


def test_global_aqr_at_import_is_exactly_cmt(official):
    """Routers left at init (zeroed output weight): lidar_weight == camera_weight for
    every query, one bias over all keys, the softmax unchanged: AQR on == AQR off."""
    on = build_detector(load_config(VOV, SMALL + HALF_RANGE).model).eval()
    assert import_state_dict(on, official, ["aqr"]).ok
    off = build_detector(load_config(VOV, SMALL + HALF_RANGE + ["model.aqr.enabled=false"]).model).eval()
    assert import_state_dict(off, official).ok
    inputs = random_inputs(on.cfg, points=4000, seed=3)
    with torch.no_grad():
        a, b = on(inputs), off(inputs)
    assert on.cfg.aqr.enabled and on.cfg.aqr.mode == "global"
    assert torch.equal(a.lidar_weight, a.camera_weight)
    assert torch.allclose(a.cls_logits, b.cls_logits, atol=1e-4)
    assert torch.allclose(a.bbox_code, b.bbox_code, atol=1e-3)           # metres, up to +-54
    assert float(a.cls_logits.std()) > 0.05                              # not a degenerate output


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aqr_perception.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, official) -> Path:
    return write_official_file(tmp_path_factory.mktemp("cmt") / "voxel0075_vov_1600x640_epoch20.pth", official)


def test_the_readme_import_refuses_a_partial_load_then_writes_a_checkpoint_the_node_loads(official_file, tmp_path,
                                                                                            official):
    """The README's command as written (only the file names differ)."""
    out = tmp_path / "models" / "cmt_aqr_vov_1600x640.pt"
    refused = _cli("import-cmt", str(official_file), "--config", VOV, "--out", str(out))
    assert refused.returncode == 2 and not out.exists()
    line = [ln for ln in refused.stderr.splitlines() if ln.startswith("aqr-perception:")]
    assert len(line) == 1 and "decoder.routers.0.mlp.0.weight" in line[0] and "--allow-missing" in line[0]
    done = _cli("import-cmt", str(official_file), "--config", VOV, "--allow-missing", "aqr", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "898 tensors loaded" in done.stdout and "99 BatchNorm counters dropped" in done.stdout
    model, blob = load_checkpoint(out)
    assert model.cfg.name == "cmt_aqr_vov_1600x640" and model.cfg.lidar.encoder == "voxel"
    assert (model.cfg.image.input_width, model.cfg.image.input_height) == (1600, 640)
    assert blob["meta"]["imported_from"]["mmcv_meta"]["epoch"] == 20
    assert torch.equal(model.state_dict()["reference_points.weight"], official[HEAD + "reference_points.weight"])


def test_cli_refuses_a_checkpoint_of_other_classes(tmp_path, official):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": official, "meta": {"CLASSES": CLASSES[::-1]}}, path)
    r = _cli("import-cmt", str(path), "--config", VOV, "--out", str(tmp_path / "x.pt"), "--allow-missing", "aqr")
    assert r.returncode == 2 and "classes" in r.stderr and not (tmp_path / "x.pt").exists()


def test_a_meta_with_objects_is_refused_and_read_with_trust_file(tmp_path, official):
    """The safe reader (``weights_only``) refuses a file whose meta holds an object and says
    how to read it; ``--trust-file`` (``trust=True``) reads it, weights and meta."""
    import datetime

    from aqr_perception.model.cmt_import import read_mmcv_checkpoint

    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": official, "meta": {"CLASSES": CLASSES, "time": datetime.datetime(2023, 3, 1)}}, path)
    r = _cli("import-cmt", str(path), "--config", VOV, "--out", str(tmp_path / "x.pt"), "--allow-missing", "aqr")
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("aqr-perception:")]
    assert r.returncode == 2 and len(line) == 1 and "--trust-file reads it" in line[0]
    assert not (tmp_path / "x.pt").exists()
    state, meta = read_mmcv_checkpoint(path, trust=True)
    assert meta["time"] == datetime.datetime(2023, 3, 1) and state.keys() == official.keys()


def test_queries_are_encoded_at_their_clamped_reference_points(imported):
    """CMT encodes a query at inverse_sigmoid(ref).sigmoid(): a learned point outside [0, 1]
    is encoded (and decoded) as the nearest point of [1e-5, 1 - 1e-5]^3."""
    model, _ = imported
    assert model.cfg.transformer.query_pe_clamp
    inputs = random_inputs(model.cfg, points=3000, seed=4)
    saved = model.reference_points.weight.detach().clone()
    outside = saved.clone()
    outside[:50, 0] = -0.3
    outside[50:100, 1] = 1.4
    try:
        with torch.no_grad():
            model.reference_points.weight.copy_(outside)
            a = model(inputs)
            model.reference_points.weight.copy_(outside.clamp(1e-5, 1 - 1e-5))
            b = model(inputs)
    finally:
        with torch.no_grad():
            model.reference_points.weight.copy_(saved)
    assert torch.allclose(a.cls_logits, b.cls_logits, atol=1e-4)
    assert torch.allclose(a.bbox_code, b.bbox_code, atol=1e-3)
