"""The AQR bias path against independent references: the bias built by explicit loops,
the attention formula written out, and torch.nn.MultiheadAttention with a float mask."""
import math

import pytest
import torch

from aqr_perception.model.aqr import AqrBias, MemoryLayout, QueryProjection, dense_bias
from aqr_perception.model.attention import MultiheadAttention, masked_attention

TOL = 1e-5


def _layout():
    return MemoryLayout(bev_h=9, bev_w=10, num_views=3, img_h=4, img_w=5)


def _bias(mode, b=2, q=7, seed=0, strength=5.0, bev_window=5, camera_window=3):
    g = torch.Generator().manual_seed(seed)
    lay = _layout()
    vis = torch.rand(b, q, generator=g) > 0.3
    vis[0, 0] = False                                   # a query seen by no camera
    proj = QueryProjection(
        bev_index=torch.randint(0, lay.num_bev, (b, q), generator=g),
        cam_view=torch.randint(0, lay.num_views, (b, q), generator=g),
        cam_row=torch.randint(0, lay.img_h, (b, q), generator=g),
        cam_col=torch.randint(0, lay.img_w, (b, q), generator=g), cam_visible=vis)
    proj.bev_index[0, 1] = 0                             # window clipped at a corner
    return AqrBias(mode=mode, strength=strength, lidar_weight=torch.rand(b, q, generator=g),
                   camera_weight=torch.rand(b, q, generator=g), layout=lay, projection=proj,
                   bev_window=bev_window, camera_window=camera_window)


def _loop_bias(a: AqrBias) -> torch.Tensor:
    """The spec's bias, one key at a time."""
    lay, p = a.layout, a.projection
    b, q = a.lidar_weight.shape
    out = torch.zeros(b, q, lay.num_keys, dtype=torch.float64)
    for i in range(b):
        for j in range(q):
            lw, cw = float(a.lidar_weight[i, j]), float(a.camera_weight[i, j])
            if a.mode == "global":
                out[i, j, :lay.num_bev] = (lw - 0.5) * 2 * a.strength
                out[i, j, lay.num_bev:] = (cw - 0.5) * 2 * a.strength
                continue
            r0, c0 = divmod(int(p.bev_index[i, j]), lay.bev_w)
            for r in range(lay.bev_h):
                for c in range(lay.bev_w):
                    if abs(r - r0) <= a.bev_window // 2 and abs(c - c0) <= a.bev_window // 2:
                        decay = max(0.0, 1 - math.hypot(r - r0, c - c0) / a.bev_window)
                        out[i, j, r * lay.bev_w + c] = lw * decay * a.strength
            if not bool(p.cam_visible[i, j]):
                continue
            v, r0, c0 = int(p.cam_view[i, j]), int(p.cam_row[i, j]), int(p.cam_col[i, j])
            for r in range(lay.img_h):
                for c in range(lay.img_w):
                    if abs(r - r0) <= a.camera_window // 2 and abs(c - c0) <= a.camera_window // 2:
                        decay = max(0.0, 1 - math.hypot(r - r0, c - c0) / a.camera_window)
                        out[i, j, lay.num_bev + (v * lay.img_h + r) * lay.img_w + c] = cw * decay * a.strength
    return out


@pytest.mark.parametrize("mode", ["global", "local"])
def test_dense_bias_equals_the_spec_formula(mode):
    a = _bias(mode)
    torch.testing.assert_close(dense_bias(a).double(), _loop_bias(a), atol=1e-6, rtol=0)


def test_local_bias_is_zero_outside_windows_and_for_unseen_queries():
    a = _bias("local")
    bias = dense_bias(a)
    lay = a.layout
    assert torch.count_nonzero(bias[0, 0, lay.num_bev:]) == 0   # not visible in any camera
    assert torch.count_nonzero(bias[0, 0, :lay.num_bev]) <= a.bev_window ** 2
    assert bias.min() >= 0 and bias.max() <= a.strength


def _padding(b, lay, seed=1):
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(b, lay.num_keys, dtype=torch.bool)
    pad[0, :lay.num_bev] = True                                          # sample 0: no LiDAR
    view = lay.num_bev + lay.img_h * lay.img_w
    pad[1, view:view + lay.img_h * lay.img_w] = True                     # sample 1: view 1 missing
    pad[1] |= torch.rand(lay.num_keys, generator=g) < 0.1
    return pad


@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("with_padding", [False, True])
def test_cross_attention_matches_formula_and_torch_mha(mode, with_padding):
    torch.manual_seed(0)
    a = _bias(mode)
    b, q = a.lidar_weight.shape
    c, heads = 16, 4
    lay = a.layout
    query, key, value = torch.randn(b, q, c), torch.randn(b, lay.num_keys, c), torch.randn(b, lay.num_keys, c)
    pad = _padding(b, lay) if with_padding else None

    ours = MultiheadAttention(c, heads)
    out = ours(query, key, value, key_padding_mask=pad, aqr=a)

    float_mask = _loop_bias(a).float()
    if pad is not None:
        float_mask = float_mask.masked_fill(pad[:, None, :], float("-inf"))
    # (1) the formula, by hand
    w_q, w_k, w_v = ours.in_proj_weight.chunk(3)
    b_q, b_k, b_v = ours.in_proj_bias.chunk(3)
    split = lambda x: x.view(b, -1, heads, c // heads).transpose(1, 2)  # noqa: E731
    qh, kh, vh = split(query @ w_q.T + b_q), split(key @ w_k.T + b_k), split(value @ w_v.T + b_v)
    att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(c // heads) + float_mask[:, None], dim=-1)
    by_hand = ours.out_proj((att @ vh).transpose(1, 2).reshape(b, q, c))
    assert (out - by_hand).abs().max() <= TOL

    # (2) torch.nn.MultiheadAttention with the float mask expanded to [B*heads, Nq, Nk]
    ref = torch.nn.MultiheadAttention(c, heads, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    mask3 = float_mask.repeat_interleave(heads, dim=0)
    expected, _ = ref(query, key, value, attn_mask=mask3, need_weights=False)
    assert (out - expected).abs().max() <= TOL

    # (3) the same with sequence-first tensors
    ref_sf = torch.nn.MultiheadAttention(c, heads, batch_first=False)
    ref_sf.load_state_dict(ours.state_dict())
    expected_sf, _ = ref_sf(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), attn_mask=mask3,
                            need_weights=False)
    assert (out - expected_sf.transpose(0, 1)).abs().max() <= TOL


def test_fully_masked_query_gives_zeros_not_nan():
    a = _bias("global", b=1)
    lay = a.layout
    attn = MultiheadAttention(8, 2)
    pad = torch.ones(1, lay.num_keys, dtype=torch.bool)
    out = attn(torch.randn(1, 7, 8), torch.randn(1, lay.num_keys, 8), torch.randn(1, lay.num_keys, 8),
               key_padding_mask=pad, aqr=a)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attn.out_proj.bias.expand_as(out))


@pytest.mark.parametrize("impl", ["dense", "fused"])
def test_self_attention_with_dn_mask_matches_torch_mha(impl):
    torch.manual_seed(1)
    c, heads, t = 16, 4, 9
    mask = torch.rand(t, t) > 0.6
    mask.fill_diagonal_(False)
    pad = torch.zeros(2, t, dtype=torch.bool)
    pad[1, -2:] = True
    x = torch.randn(2, t, c, requires_grad=True)
    ours = MultiheadAttention(c, heads)
    ref = torch.nn.MultiheadAttention(c, heads, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    for attn_mask in (mask, None):
        for key_padding_mask in (None, pad):
            expected, _ = ref(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False)
            out = ours(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, impl=impl)
            assert (out - expected).abs().max() <= TOL
            g_ref, = torch.autograd.grad((expected * expected).sum(), x)
            g, = torch.autograd.grad((out * out).sum(), x)
            assert (g - g_ref).abs().max() <= 1e-4


@pytest.mark.parametrize("impl", ["dense", "fused"])
def test_self_attention_query_with_every_key_masked_gives_zeros_and_finite_grads(impl):
    torch.manual_seed(2)
    c, heads, t = 8, 2, 5
    mask = torch.zeros(t, t, dtype=torch.bool)
    mask[3] = True                                    # query 3 sees no key
    x = torch.randn(2, t, c, requires_grad=True)
    attn = MultiheadAttention(c, heads)
    q, k, v = (attn._heads(torch.nn.functional.linear(x, w, b))
               for w, b in zip(attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)))
    keep = torch.arange(t) != 3                        # the other queries: the formula written out
    m = torch.zeros(t, t).masked_fill(mask, -math.inf)[keep]
    expected = torch.softmax(q[:, :, keep] @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]) + m, -1) @ v
    pad = torch.zeros(2, t, dtype=torch.bool)
    pad[1] = True                                      # and with key padding: sample 1 has no key at all
    for key_padding_mask in (None, pad):
        out = masked_attention(q, k, v, mask, key_padding_mask, impl)
        assert (out[:, :, 3] == 0).all()
        live = slice(0, 1) if key_padding_mask is not None else slice(None)
        assert (out[live][:, :, keep] - expected[live]).abs().max() <= TOL
        if key_padding_mask is not None:
            assert (out[1] == 0).all()
        g, = torch.autograd.grad(out.sum(), x, retain_graph=True)     # q, k, v serve both cases
        assert torch.isfinite(g).all()


def test_bias_only_moves_attention_not_values():
    # With equal keys everywhere the bias cannot change the output: it only re-weights.
    a = _bias("global", b=1)
    lay = a.layout
    attn = MultiheadAttention(8, 2)
    key = torch.randn(1, 1, 8).expand(1, lay.num_keys, 8)
    val = torch.randn(1, 1, 8).expand(1, lay.num_keys, 8)
    q = torch.randn(1, 7, 8)
    torch.testing.assert_close(attn(q, key, val, aqr=a), attn(q, key, val), atol=1e-5, rtol=0)


def test_every_decoder_layer_gets_the_spec_bias_of_its_own_router_weights():
    # The decoder computes the local windows once and shares them between its layers;
    # each layer's bias must still be the spec's for that layer's router weights.
    from aqr_perception.config import load_config
    from aqr_perception.model.decoder import AqrDecoder

    torch.manual_seed(2)
    cfg = load_config("tiny").model
    a = _bias("local", bev_window=cfg.aqr.bev_window, camera_window=cfg.aqr.camera_window)
    decoder = AqrDecoder(cfg).eval()
    for router in decoder.routers:                        # weights that differ per query and layer
        torch.nn.init.normal_(router.mlp[-1].weight, std=0.5)
    seen = []
    for layer in decoder.layers:
        layer.cross_attn.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["aqr"]), with_kwargs=True)
    b, q = a.lidar_weight.shape
    c, lay = cfg.transformer.embed_dims, a.layout
    with torch.no_grad():
        decoder(torch.randn(b, q, c), torch.randn(b, lay.num_keys, c), torch.randn(b, lay.num_keys, c), lay,
                a.projection, None, None, torch.ones(b, dtype=torch.bool), a.projection.cam_visible)
    assert len(seen) == len(decoder.layers)
    assert seen[0].windows is not None and all(s.windows is seen[0].windows for s in seen)   # computed once
    assert not torch.allclose(seen[0].lidar_weight, seen[1].lidar_weight)
    for aqr in seen:
        torch.testing.assert_close(dense_bias(aqr).double(), _loop_bias(aqr), atol=1e-6, rtol=0)
