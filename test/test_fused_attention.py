"""The fused AQR attention equals the dense reference (values and gradients), without
ever building the (B, heads, Q, K) bias."""

import pytest
import torch

from aqr_perception.model.aqr import AqrBias, MemoryLayout, QueryProjection
from aqr_perception.model.attention import aqr_cross_attention
from aqr_perception.model.fused_attention import forced_route, observed_routes

TOL = 1e-5


def _case(mode, seed, b=2, h=3, q=11, d=8, layout=(6, 7, 3, 4, 5), pad="none", windows=(5, 3)):
    g = torch.Generator().manual_seed(seed)
    lay = MemoryLayout(*layout)
    vis = torch.rand(b, q, generator=g) > 0.4
    proj = QueryProjection(torch.randint(0, lay.num_bev, (b, q), generator=g),
                           torch.randint(0, lay.num_views, (b, q), generator=g),
                           torch.randint(0, lay.img_h, (b, q), generator=g),
                           torch.randint(0, lay.img_w, (b, q), generator=g), vis)
    aqr = AqrBias(mode, 5.0, torch.rand(b, q, generator=g, dtype=torch.float64),
                  torch.rand(b, q, generator=g, dtype=torch.float64), lay, proj, *windows)
    qq, kk, vv = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for n in (q, lay.num_keys, lay.num_keys))
    mask = None
    view = lay.img_h * lay.img_w
    if pad == "lidar":
        mask = torch.zeros(b, lay.num_keys, dtype=torch.bool)
        mask[0, :lay.num_bev] = True
    elif pad == "views":
        mask = torch.zeros(b, lay.num_keys, dtype=torch.bool)
        mask[1, lay.num_bev:lay.num_bev + view] = True
        mask[0, lay.num_bev + 2 * view:] = True
    elif pad == "everything":
        mask = torch.zeros(b, lay.num_keys, dtype=torch.bool)
        mask[1] = True
    elif pad == "random":
        mask = torch.rand(b, lay.num_keys, generator=g) < 0.3
    return qq, kk, vv, mask, aqr


def _fused(q, k, v, mask, aqr, path, grad=False):
    grad = grad and path != "dense_flash"          # the dense_flash route is inference only
    with forced_route(path), torch.set_grad_enabled(grad):
        q = q.clone().requires_grad_(grad)
        return aqr_cross_attention(q, k, v, mask, aqr, impl="fused").detach()


@pytest.mark.parametrize("path", ["dense_flash", "segment", "dense_sdpa", "folded"])
@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("pad", ["none", "lidar", "views", "everything", "random"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_equals_dense(mode, pad, seed, path):
    q, k, v, mask, aqr = _case(mode, seed, pad=pad)
    dense = aqr_cross_attention(q, k, v, mask, aqr, impl="dense")
    fused = _fused(q, k, v, mask, aqr, path, grad=bool(seed))
    assert torch.isfinite(fused).all()
    assert (dense - fused).abs().max() <= TOL


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("mode", ["global", "local"])
def test_segment_route_is_taken_on_cpu_and_builds_nothing_dense_sized(mode, grad, monkeypatch):
    """On CPU (inference and training) the segment route is the one taken, and it never
    runs the folded SDPA call (whose memory is checked by bench/attention.py)."""
    from aqr_perception.model import fused_attention

    def forbidden(*args, **kwargs):
        raise AssertionError("folded SDPA used on CPU")

    monkeypatch.setattr(fused_attention.F, "scaled_dot_product_attention", forbidden)
    q, k, v, mask, aqr = _case(mode, 8, pad="views")
    dense = aqr_cross_attention(q, k, v, mask, aqr, impl="dense")
    assert (dense - _fused(q, k, v, mask, aqr, "segment", grad)).abs().max() <= TOL


@pytest.mark.parametrize("mode", ["global", "local"])
def test_dense_flash_route_only_for_small_inference(mode, monkeypatch):
    """Local mode without autograd and below MAX_BIAS_ENTRIES: the dense bias goes to the
    flash kernel; with autograd (the mask gets no gradient there), a larger bias, or in
    global mode (as fast without a mask): the segment route."""
    from aqr_perception.model import dense_flash, segment_attention

    taken = []

    def spy(fn, name):
        def run(*args):
            taken.append(name)
            return fn(*args)
        return run

    for module, name in ((dense_flash, "dense_flash_attention"), (segment_attention, "segment_lse_attention")):
        monkeypatch.setattr(module, name, spy(getattr(module, name), name))
    q, k, v, mask, aqr = _case(mode, 2, pad="views")
    dense = aqr_cross_attention(q, k, v, mask, aqr, impl="dense")
    small = "dense_flash_attention" if mode == "local" else "segment_lse_attention"
    for grad, limit, route in ((False, None, small), (True, None, "segment_lse_attention"),
                               (False, q.shape[0] * q.shape[2] * k.shape[2] - 1, "segment_lse_attention")):
        if limit is not None:
            monkeypatch.setattr(dense_flash, "MAX_BIAS_ENTRIES", limit)
        taken.clear()
        with torch.set_grad_enabled(grad):
            out = aqr_cross_attention(q.clone().requires_grad_(grad), k, v, mask, aqr, impl="fused").detach()
        assert taken == [route] and (out - dense).abs().max() <= TOL


def test_forced_route_takes_the_route_the_route_tests_name(monkeypatch):
    """The route tests above and bench/attention.py compare routes through forced_route: in
    local-mode inference each named route runs, and only it."""
    from aqr_perception.model import dense_flash, dense_sdpa, fused_attention, segment_attention

    taken = []
    for module, name in ((dense_flash, "dense_flash_attention"), (segment_attention, "segment_lse_attention"),
                         (dense_sdpa, "dense_sdpa_attention"), (fused_attention, "_window_part")):
        fn = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, fn=fn, name=name: taken.append(name) or fn(*a))
    q, k, v, mask, aqr = _case("local", 5, pad="views")
    want = {"dense_flash": ["dense_flash_attention"], "segment": ["segment_lse_attention"],
            "dense_sdpa": ["dense_sdpa_attention"], "folded": ["_window_part"]}
    for path in fused_attention.ROUTES:
        taken.clear()
        with observed_routes() as seen:
            _fused(q, k, v, mask, aqr, path)
        assert taken == want[path] and seen == {path: 1}, path     # the dispatcher reports what ran
    with pytest.raises(ValueError):
        forced_route("sdpa").__enter__()
    taken.clear()
    with torch.no_grad():                                 # no forced route: the dispatcher's own choice
        aqr_cross_attention(q, k, v, mask, aqr, impl="fused")
    assert taken == ["dense_flash_attention"]             # the switch is reset after each block


def test_dense_sdpa_route_where_the_cpu_routes_cannot_run(monkeypatch):
    """Local-mode training that the segment route cannot take (dropout, padding that is not
    constant per segment; on CUDA every call) hands SDPA the dense bias as a mask with
    gradients: exact values and gradients; from MAX_SCORES on, and in global mode, the
    folded route."""
    from aqr_perception.model import dense_sdpa

    def grads(impl, q, k, v, mask, aqr, dropout_p=0.0):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, aqr.lidar_weight, aqr.camera_weight)]
        a = AqrBias(aqr.mode, aqr.strength, leaves[3], leaves[4], aqr.layout, aqr.projection, aqr.bev_window,
                    aqr.camera_window)
        out = aqr_cross_attention(*leaves[:3], mask, a, impl=impl, dropout_p=dropout_p)
        out.square().sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    q, k, v, mask, aqr = _case("local", 12, pad="random")         # unstructured padding: no segment route
    dense = grads("dense", q, k, v, mask, aqr)
    with observed_routes() as seen:
        fused = grads("fused", q, k, v, mask, aqr)
    assert seen == {"dense_sdpa": 1}
    for name, d, f in zip(["out", "q", "k", "v", "lidar_weight", "camera_weight"], dense, fused):
        assert (d - f).abs().max() <= 1e-6, name
    q, k, v, mask, aqr = _case("local", 13, pad="views")
    with observed_routes() as seen:
        out = grads("fused", q, k, v, mask, aqr, dropout_p=0.5)[0]    # dropout: no segment route either
    assert seen == {"dense_sdpa": 1} and torch.isfinite(out).all()
    b, h, nq, _ = q.shape
    monkeypatch.setitem(dense_sdpa.MAX_SCORES, "cpu", b * h * nq * k.shape[2])
    for mode in ("local", "global"):
        q, k, v, mask, aqr = _case(mode, 14, pad="random")
        with observed_routes() as seen:
            fused = grads("fused", q, k, v, mask, aqr)
        assert seen == {"folded": 1}
        assert (grads("dense", q, k, v, mask, aqr)[0] - fused[0]).abs().max() <= TOL


def test_padding_checked_per_segment_once_and_only_where_a_route_needs_it(segment_padding_checks):
    """Whether the padding is constant within segments is a host sync on CUDA: the dispatcher
    finds it out once per call, and not at all on the dense_sdpa route (every local-mode call
    on CUDA; here, dropout), which takes the key padding as it is."""
    calls = segment_padding_checks
    for mode, pad, dropout_p, route, checks in (("local", "views", 0.5, "dense_sdpa", 0),
                                                ("local", "views", 0.0, "segment", 1),
                                                ("local", "random", 0.0, "dense_sdpa", 1),
                                                ("global", "views", 0.0, "segment", 1),
                                                ("global", "views", 0.5, "folded", 1),
                                                ("global", "random", 0.0, "folded", 1)):
        q, k, v, mask, aqr = _case(mode, 13, pad=pad)
        calls.clear()
        with observed_routes() as seen:           # with gradients: the dense_flash route is inference only
            out = aqr_cross_attention(q.clone().requires_grad_(True), k, v, mask, aqr, impl="fused",
                                      dropout_p=dropout_p).detach()
        assert seen == {route: 1} and len(calls) == checks, (mode, pad, dropout_p)
        if dropout_p == 0.0:
            assert (out - aqr_cross_attention(q, k, v, mask, aqr, impl="dense")).abs().max() <= TOL


@pytest.mark.parametrize("pad", ["lidar", "views", "everything", "random"])
def test_dense_flash_over_several_key_tiles_with_padding(pad):
    """More keys than the CPU flash kernel's tile (512): a dropped LiDAR masks whole tiles."""
    q, k, v, mask, aqr = _case("local", 11, b=2, h=2, q=16, d=8, layout=(24, 24, 3, 6, 8), pad=pad)
    assert aqr.layout.num_bev > 512
    dense = aqr_cross_attention(q, k, v, mask, aqr, impl="dense")
    fused = _fused(q, k, v, mask, aqr, "dense_flash")
    assert torch.isfinite(fused).all() and (dense - fused).abs().max() <= TOL


@pytest.mark.parametrize("mode", ["global", "local"])
def test_fp32_error_within_target(mode):
    q, k, v, mask, aqr = _case(mode, 3, b=1, h=8, q=40, d=32, layout=(18, 18, 6, 5, 9), windows=(15, 15))
    q, k, v = q.float(), k.float(), v.float()
    aqr.lidar_weight, aqr.camera_weight = aqr.lidar_weight.float(), aqr.camera_weight.float()
    dense = aqr_cross_attention(q, k, v, None, aqr, impl="dense")
    for path in ("dense_flash", "segment", "dense_sdpa", "folded"):
        assert (dense - _fused(q, k, v, None, aqr, path)).abs().max() <= TOL, path


@pytest.mark.parametrize("path", ["dense_flash", "segment", "dense_sdpa", "folded"])
def test_queries_without_window_and_windows_at_the_border(path):
    q, k, v, mask, aqr = _case("local", 4, pad="lidar")
    aqr.projection.cam_visible[:] = False                 # no camera windows at all
    aqr.projection.bev_index[:, 0] = 0                    # clipped at a corner
    aqr.projection.bev_index[:, 1] = aqr.layout.num_bev - 1
    dense = aqr_cross_attention(q, k, v, mask, aqr, impl="dense")
    fused = _fused(q, k, v, mask, aqr, path)
    assert (dense - fused).abs().max() <= TOL


@pytest.mark.parametrize("path", ["segment", "dense_sdpa", "folded"])
@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("pad", ["none", "views", "lidar", "everything"])
@pytest.mark.parametrize("batch", [1, 2])
def test_gradients_equal_dense(mode, pad, path, batch):
    """'lidar' (masked-modal training drops the LiDAR): queries that see no camera have no
    window entry at all; their gradients must stay finite and exact. 'everything': a sample
    with no key at all (zero output, zero gradients). A batch of one takes the segment
    route's shortcut of using a whole-memory run's kernel gradients as dk, dv."""
    q, k, v, mask, aqr = _case(mode, 5, pad=pad)
    if batch == 1:      # the second sample: 'views' and 'everything' pad it, 'lidar' does not
        keep = slice(1, 2)
        q, k, v = q[keep], k[keep], v[keep]
        mask = None if mask is None else mask[keep]
        p = aqr.projection
        aqr = AqrBias(aqr.mode, aqr.strength, aqr.lidar_weight[keep], aqr.camera_weight[keep], aqr.layout,
                      QueryProjection(*(t[keep] for t in (p.bev_index, p.cam_view, p.cam_row, p.cam_col,
                                                          p.cam_visible))),
                      aqr.bev_window, aqr.camera_window)
    grads = {}
    for impl in ("dense", "fused"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, aqr.lidar_weight, aqr.camera_weight)]
        a = AqrBias(aqr.mode, aqr.strength, leaves[3], leaves[4], aqr.layout, aqr.projection, aqr.bev_window,
                    aqr.camera_window)
        with forced_route(path):
            out = aqr_cross_attention(leaves[0], leaves[1], leaves[2], mask, a, impl=impl)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[impl] = [t.grad for t in leaves]
    for name, gd, gf in zip(["q", "k", "v", "lidar_weight", "camera_weight"], grads["dense"], grads["fused"]):
        assert torch.isfinite(gf).all() and (gd - gf).abs().max() <= 1e-6, name


def test_no_bias_path_matches_reference():
    q, k, v, mask, _ = _case("global", 6, pad="views")
    dense = aqr_cross_attention(q, k, v, mask, None, impl="dense")
    fused = aqr_cross_attention(q, k, v, mask, None, impl="fused")
    assert (dense - fused).abs().max() <= TOL


def _export_case(mode):
    """(module, its args, the dense reference output) for exporting the fused attention."""
    q, k, v, _, aqr = _case(mode, 7)
    q, k, v = q.float(), k.float(), v.float()
    p = aqr.projection

    class Wrapper(torch.nn.Module):
        def forward(self, q, k, v, lw, cw, bev, view, row, col, vis):
            a = AqrBias(mode, aqr.strength, lw, cw, aqr.layout, QueryProjection(bev, view, row, col, vis),
                        aqr.bev_window, aqr.camera_window)
            return aqr_cross_attention(q, k, v, None, a, impl="fused")

    args = (q, k, v, aqr.lidar_weight.float(), aqr.camera_weight.float(), p.bev_index, p.cam_view, p.cam_row,
            p.cam_col, p.cam_visible)
    dense = aqr_cross_attention(q, k, v, None, AqrBias(mode, aqr.strength, args[3], args[4], aqr.layout, p,
                                                       aqr.bev_window, aqr.camera_window), impl="dense")
    return Wrapper().eval(), args, dense


def _no_dense_sdpa(monkeypatch):
    """Exported graphs keep the folded route (no Q x K tensor in them): dense_sdpa must not run."""
    from aqr_perception.model import dense_sdpa

    def forbidden(*args):
        raise AssertionError("dense_sdpa traced into an exported graph")
    monkeypatch.setattr(dense_sdpa, "dense_sdpa_attention", forbidden)


@pytest.mark.parametrize("mode", ["global", "local"])
def test_fused_attention_exports_with_torch_export(mode, monkeypatch):
    module, args, dense = _export_case(mode)
    _no_dense_sdpa(monkeypatch)
    exported = torch.export.export(module, args)
    assert (exported.module()(*args) - dense).abs().max() <= TOL


@pytest.mark.parametrize("mode", ["global", "local"])
def test_fused_attention_exports_to_onnx_and_runs_in_onnxruntime(mode, tmp_path, monkeypatch):
    """torch.onnx (dynamo exporter) takes the folded route (tracing); onnxruntime's result
    is compared with the dense reference computed by torch."""
    import onnxruntime

    module, args, dense = _export_case(mode)
    _no_dense_sdpa(monkeypatch)
    path = tmp_path / f"aqr_attention_{mode}.onnx"
    torch.onnx.export(module, args, str(path), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["q", "k", "v", "lw", "cw", "bev", "view", "row", "col", "vis"]       # Wrapper.forward's
    assert [i.name for i in session.get_inputs()] == names
    feeds = {name: a.numpy() for name, a in zip(names, args)}
    out = torch.from_numpy(session.run(None, feeds)[0])
    assert out.shape == dense.shape and (out - dense).abs().max() <= TOL


@pytest.mark.parametrize("path", ["segment", "dense_sdpa", "folded"])
@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_forward_and_backward(dtype, mode, path):
    """fp16 / bf16 inputs (CPU kernels here; CUDA's are not run on this machine): the fused
    routes keep the dtype, stay finite, and are as close to the fp64 reference on the same
    (rounded) inputs as the written-out dense attention in that dtype is."""
    q, k, v, mask, aqr = _case(mode, 9, b=2, h=4, q=20, d=16, pad="views", layout=(10, 10, 6, 4, 6))
    low = [t.to(dtype) for t in (q, k, v, aqr.lidar_weight, aqr.camera_weight)]
    results = {}
    for impl, dt in (("reference", torch.float64), ("dense", dtype), ("fused", dtype)):
        leaves = [t.to(dt).clone().requires_grad_(True) for t in low]   # fresh leaves: no shared .grad
        a = AqrBias(aqr.mode, aqr.strength, leaves[3], leaves[4], aqr.layout, aqr.projection, aqr.bev_window,
                    aqr.camera_window)
        with forced_route(path):
            out = aqr_cross_attention(*leaves[:3], mask, a, impl="dense" if impl == "reference" else impl)
        out.float().sum().backward()
        assert out.dtype == dt and all(t.grad.dtype == dt for t in leaves)
        results[impl] = [out.detach().double()] + [t.grad.double() for t in leaves[:3]]
    for name, ref, dense, fused in zip(["out", "dq", "dk", "dv"], *results.values()):
        assert torch.isfinite(fused).all(), name
        scale = ref.abs().max().clamp(min=1e-3)
        err_fused = float((fused - ref).abs().max() / scale)
        err_dense = float((dense - ref).abs().max() / scale)
        assert err_fused <= max(3 * err_dense, 2e-2 if dtype == torch.bfloat16 else 3e-3), (name, err_fused, err_dense)


def test_head_dim_decides_whether_the_folded_route_looks_for_padding():
    """On CUDA the folded call's head dim is a multiple of 8: for CMT's d = 32 with six views
    one column per segment fits the same 40 as the fewest columns (none in local mode, two in
    global mode), so there the route does not look whether there is padding (a host sync).
    On the CPU, and for a width that crosses a multiple of 8, fewer columns are narrower."""
    from aqr_perception.model.fused_attention import fewer_columns_narrower, head_dim

    assert [head_dim(w, True) for w in (33, 39, 40, 41)] == [40, 40, 40, 48]
    assert head_dim(39, False) == 39
    for local in (False, True):
        assert not fewer_columns_narrower(32, 6, local, cuda=True)
        assert fewer_columns_narrower(32, 6, local, cuda=False)
    assert fewer_columns_narrower(32, 12, False, cuda=True)     # 34 -> 40 against 45 -> 48
    assert not fewer_columns_narrower(8, 6, True, cuda=True)    # 9 and 16 -> 16


@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("pad", ["none", "views"])
@pytest.mark.parametrize("narrower", [False, True])
def test_folded_route_without_the_padding_look_where_it_would_not_narrow(mode, pad, narrower, monkeypatch):
    """Where fewer columns would not narrow the call (as on CUDA at d = 32), the folded route
    takes one column per segment without looking at the padding, and still equals dense."""
    from aqr_perception.model import fused_attention

    looks = []
    real = fused_attention.any_padding
    monkeypatch.setattr(fused_attention, "fewer_columns_narrower", lambda *a: narrower)
    monkeypatch.setattr(fused_attention, "any_padding", lambda p: looks.append(1) or real(p))
    q, k, v, mask, aqr = _case(mode, 5, pad=pad)
    out = _fused(q, k, v, mask, aqr, "folded")
    assert len(looks) == int(narrower)
    assert (out - aqr_cross_attention(q, k, v, mask, aqr, impl="dense")).abs().max() <= TOL


@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("route", ["segment", "folded"])
def test_a_callers_segment_padding_is_taken_without_a_check(mode, route, segment_padding_checks):
    """AqrBias.segment_padding (the detector gives it) replaces finding the padding out."""
    from aqr_perception.model import fused_attention

    checks = segment_padding_checks
    q, k, v, mask, aqr = _case(mode, 7, pad="views")
    aqr.segment_padding = fused_attention.segment_padding(mask, aqr.layout, q.shape[0], q.device)
    checks.clear()
    assert aqr.segment_padding is not None
    out = _fused(q, k, v, mask, aqr, route)
    assert not checks
    assert (out - aqr_cross_attention(q, k, v, mask, aqr, impl="dense")).abs().max() <= TOL
