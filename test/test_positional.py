"""CMT position encodings and projections against hand computation."""
import math

import numpy as np
import pytest
import torch
from model_helpers import rig_lidar2img

from aqr_perception.config import load_config
from aqr_perception.data.rig import nuscenes_like_rig
from aqr_perception.model.aqr import MemoryLayout, query_projection
from aqr_perception.model.positional import PositionEncoder, bev_cell_centres, pos2embed, ray_depths


def _pos2embed_by_hand(x, y, n):
    """The official formula, one feature at a time: dim_t_i = 2*(i//2)/n + 1."""
    def part(v):
        out = []
        for pair in range(n // 2):
            dim_even = 2 * ((2 * pair) // 2) / n + 1
            dim_odd = 2 * ((2 * pair + 1) // 2) / n + 1
            out += [math.sin(2 * math.pi * v / dim_even), math.cos(2 * math.pi * v / dim_odd)]
        return out
    return part(y) + part(x)


@pytest.mark.parametrize("x, y", [(0.0, 0.0), (0.25, 0.8), (0.5, 0.5), (0.97, 0.03)])
def test_pos2embed_matches_hand_computation(x, y):
    n = 256
    got = pos2embed(torch.tensor([[x, y, 0.4]]), n)[0]
    assert got.shape == (2 * n,)
    np.testing.assert_allclose(got.numpy(), _pos2embed_by_hand(x, y, n), atol=2e-6)


def test_pos2embed_quirk_frequencies_in_one_octave():
    # temperature unused: the largest period divisor is < 2, unlike DETR's 10000^(2i/n)
    emb = pos2embed(torch.tensor([[0.0, 0.125]]), 8)[0]
    # n = 8: dim_t = 1, 1, 1.25, 1.25, ...; y part first: sin/cos(2*pi*0.125 / dim_t)
    expect = [math.sin(math.pi / 4), math.cos(math.pi / 4), math.sin(math.pi / 4 / 1.25), math.cos(math.pi / 4 / 1.25)]
    np.testing.assert_allclose(emb[:4].numpy(), expect, atol=1e-6)


def test_bev_cell_centres_and_depths():
    c = bev_cell_centres(4)
    assert c.shape == (16, 2)
    assert c[0].tolist() == [0.125, 0.125] and c[1].tolist() == [0.375, 0.125]  # x varies fastest
    d = ray_depths(64, 1.0, 54.0)
    assert d[0] == 1.0 and abs(float(d[1]) - (1 + 53 / 64)) < 1e-6 and abs(float(d[-1]) - (1 + 63 * 53 / 64)) < 1e-5


def _encoder(cfg):
    t = cfg.transformer
    return PositionEncoder(t.embed_dims, t.depth_num, t.depth_start, cfg.point_cloud_range, cfg.bev_size,
                           cfg.image.feature_stride)


def test_image_rays_back_project_through_inverse_lidar2img():
    cfg = load_config("cmt_aqr_r50_800x320").model
    enc = _encoder(cfg)
    l2i = rig_lidar2img(800, 320)
    rays = enc.image_rays(20, 50, 320, 800)          # (h, w, D, 4)
    assert rays.shape == (20, 50, 64, 4)
    i, j, k, v = 7, 31, 10, 2                          # feature pixel (7, 31), depth 10, CAM_BACK
    u_px, v_px, d = 31 * 800 / 50, 7 * 320 / 20, 1 + 10 * 53 / 64
    np.testing.assert_allclose(rays[i, j, k].numpy(), [u_px * d, v_px * d, d, 1], rtol=1e-6)
    # by hand: solve lidar2img @ X = (u d, v d, d, 1) with numpy, normalise over the range
    X = np.linalg.solve(l2i[v].double().numpy(), np.array([u_px * d, v_px * d, d, 1.0]))
    r = np.array(cfg.point_cloud_range)
    expected = (X[:3] - r[:3]) / (r[3:] - r[:3])
    from aqr_perception.model.positional import rays_to_normalised_lidar
    got = rays_to_normalised_lidar(rays[i, j, k], torch.linalg.inv(l2i[v]), enc.pc_range)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # and the embedding stack has the right size: 6 views x 20 x 50 tokens, C channels
    pe = enc.image_key_pe(l2i[None], 20, 50, 320, 800)
    assert pe.shape == (1, 6, 20, 50, 256)


def test_point_projects_into_the_right_view_and_pixel():
    cfg = load_config("cmt_aqr_r50_800x320").model
    enc = _encoder(cfg)
    cams = nuscenes_like_rig()
    l2i = rig_lidar2img(800, 320)
    r = np.array(cfg.point_cloud_range)
    # A point 20 m straight behind, 1 m to the left, at LiDAR height: CAM_BACK (view 3).
    p = np.array([-20.0, 1.0, 0.0])
    ref = torch.tensor((p - r[:3]) / (r[3:] - r[:3]), dtype=torch.float32)[None, None]
    uv, visible = enc.project_reference_points(ref, l2i[None], 320, 800)
    assert visible[0, :, 0].tolist() == [False, False, False, True, False, False]
    # by hand for CAM_BACK: camera axes right = (sin yaw, -cos yaw, 0), down = -z, forward = (cos yaw, sin yaw, 0)
    cam = cams[3]
    pos = -cam.lidar_to_camera[:3, :3].T @ cam.lidar_to_camera[:3, 3]
    yaw = math.pi
    rel = p - pos
    x_c = rel @ np.array([math.sin(yaw), -math.cos(yaw), 0])
    y_c = -rel[2]
    z_c = rel @ np.array([math.cos(yaw), math.sin(yaw), 0])
    fx = cam.K[0, 0] * 800 / 1600
    fy = cam.K[1, 1] * 320 / 900
    u = fx * x_c / z_c + 400
    v = fy * y_c / z_c + 160
    np.testing.assert_allclose(uv[0, 3, 0].numpy(), [u, v], atol=1e-3)
    # and the router's camera cell is that pixel on the stride-16 map of view 3
    lay = MemoryLayout(180, 180, 6, 20, 50)
    proj = query_projection(ref, uv, visible, lay, 16, 320, 800)
    assert (int(proj.cam_view), int(proj.cam_row), int(proj.cam_col)) == (3, int(v // 16), int(u // 16))
    cell_x, cell_y = int((p[0] - r[0]) / 108 * 180), int((p[1] - r[1]) / 108 * 180)
    assert int(proj.bev_index) == cell_y * 180 + cell_x


def test_query_rv_encoding_rebuilds_the_ray_through_the_reference_point():
    # The ray rebuilt at the query's pixel passes through the query's own 3D point.
    cfg = load_config("cmt_aqr_r50_800x320").model
    enc = _encoder(cfg)
    l2i = rig_lidar2img(800, 320)[None]
    r = torch.tensor(cfg.point_cloud_range)
    p = torch.tensor([12.0, -3.0, 0.5])
    ref = ((p - r[:3]) / (r[3:] - r[:3]))[None, None]
    uv, visible = enc.project_reference_points(ref, l2i, 320, 800)
    v = int(visible[0, :, 0].nonzero()[0])
    depth = float((l2i[0, v] @ torch.cat([p, torch.ones(1)]))[2])
    ray_pt = torch.tensor([uv[0, v, 0, 0] * depth, uv[0, v, 0, 1] * depth, depth, 1.0])
    back = torch.linalg.inv(l2i[0, v]) @ ray_pt
    torch.testing.assert_close(back[:3], p, atol=1e-3, rtol=0)
    # query PE = BEV part + RV part of the visible view(s) only
    pe = enc.query_pe(ref, l2i, 320, 800)
    masked = enc.query_pe(ref, l2i, 320, 800, camera_valid=torch.zeros(1, 6, dtype=torch.bool))
    bev_only = enc.bev_embedding(pos2embed(ref, 256))
    torch.testing.assert_close(masked, bev_only)
    assert not torch.allclose(pe, bev_only)


def test_inference_reuses_encodings_until_weights_or_calibration_change():
    cfg = load_config("tiny").model
    enc = _encoder(cfg).eval()
    fresh = _encoder(cfg).eval()
    fresh.load_state_dict(enc.state_dict())
    h, w = cfg.image.input_height, cfg.image.input_width
    fh, fw = cfg.feature_hw
    l2i = rig_lidar2img(w, h)[None]
    ref = torch.rand(1, 50, 3, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(1, 6, dtype=torch.bool)

    def all_three(e, l2i, valid):
        return e.bev_key_pe(), e.image_key_pe(l2i, fh, fw, h, w), e.query_pe(ref, l2i, h, w, valid)

    with torch.inference_mode():
        first = all_three(enc, l2i, valid)
        again = all_three(enc, l2i.clone(), valid.clone())
        assert all(a is b for a, b in zip(first, again))                    # reused
        moved = l2i.clone()
        moved[0, 2, 0, 3] += 0.5                                            # one camera recalibrated
        masked = valid.clone()
        masked[0, 4] = False
        for got, want in zip(all_three(enc, moved, masked), all_three(fresh, moved, masked)):
            assert torch.allclose(got, want)
        assert not torch.allclose(enc.query_pe(ref, moved, h, w, masked), first[2])
    other = _encoder(cfg).eval()                                            # new weights, loaded in place
    enc.load_state_dict(other.state_dict())
    with torch.inference_mode():
        for got, want in zip(all_three(enc, l2i, valid), all_three(other, l2i, valid)):
            assert torch.allclose(got, want)
    # with autograd (training), nothing is reused: gradients reach the embeddings
    out = enc.bev_key_pe()
    assert out.requires_grad and out is not enc.bev_key_pe()


def test_encodings_stay_in_fp32_under_autocast():
    """mmdet's force_fp32: under bf16 autocast the encodings are computed (and returned) in
    float32, equal to the plain float32 ones."""
    cfg = load_config("tiny").model
    enc = _encoder(cfg).eval()
    h, w = cfg.image.input_height, cfg.image.input_width
    fh, fw = cfg.feature_hw
    l2i = rig_lidar2img(w, h)[None]
    ref = torch.rand(1, 50, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = (enc.bev_key_pe(), enc.image_key_pe(l2i, fh, fw, h, w), enc.query_pe(ref, l2i, h, w))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = (enc.bev_key_pe(), enc.image_key_pe(l2i, fh, fw, h, w), enc.query_pe(ref.bfloat16(), l2i, h, w))
    for g, wnt in zip(got, want):
        assert g.dtype == torch.float32
        assert torch.allclose(g, wnt, atol=1e-2)       # the bf16 reference point: rounded to 8 bits
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
