"""Exact AQR cross-attention for inference on CPU: per-segment attention merged by log-sum-exp.

The memory is made of segments (BEV tokens, then each camera view's tokens). With the
unbiased attention of the queries over one contiguous run of unpadded segments, its output
``o_r`` (Q, d) and log-sum-exp ``l_r`` (Q,), and the run's per-query bias ``c_r``:

    out = sum_r exp(l_r + c_r - m) o_r / sum_r exp(l_r + c_r - m),   m = max_r (l_r + c_r)

- global mode: two kinds of run, BEV (``c = (w_lidar - 0.5) 2 strength``) and cameras
  (``c`` from ``w_camera``); padded segments (missing LiDAR, missing views) are left out;
- local mode: ``c = 0`` on every run, plus one more part, the window copies
  (``exp(s + b) = exp(s) + exp(s + log(expm1(b)))``, see fused_attention.py): their
  ``(l_W, o_W)`` come from the window entries only, as a sampled dense-dense product
  (SDDMM: the logits q.k of exactly those entries) and a sparse x dense product with a CSR
  matrix of their softmax weights (SpMM). No gathered key/value copies, nothing Q x K.

The run outputs come from PyTorch's CPU flash-attention kernel, the one SDPA dispatches
to, called through its aten op because only that returns the log-sum-exp; the backward
calls the kernel's own backward op per run (see ``_SegmentLseAttention``), so training
takes this path too. CUDA uses dense_sdpa.py (local mode) or the folded formulation in
fused_attention.py; tracing (``torch.export``) the folded one. All are tested against the
dense reference, values and gradients.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor

from aqr_perception.model.aqr import PAD, AqrBias, MemoryLayout, global_biases, local_window_entries, segment_index

SUPPORTED_DTYPES = (torch.float32, torch.float64)


@contextlib.contextmanager
def _csr_beta_quiet():
    """Silence torch's "Sparse CSR tensor support is in beta" warning (once per CSR tensor
    built; the forward and the backward build several per head)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        yield


def usable(q: Tensor, dropout_p: float) -> bool:
    """Whether this path can run: CPU, fp32/fp64, no dropout, no tracing. It also needs the
    padding constant within segments, which the caller finds out after this (from the
    key padding, a host sync on CUDA, unless ``AqrBias.segment_padding`` gives it)."""
    return (q.device.type == "cpu" and q.dtype in SUPPORTED_DTYPES
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
            and dropout_p == 0.0 and not torch.compiler.is_compiling())


def _runs(layout: MemoryLayout, padded: list[bool], split_bev: bool) -> list[tuple[int, int, int]]:
    """Contiguous key ranges of unpadded segments: (start, end, kind) with kind 0 = BEV,
    1 = cameras; with ``split_bev`` BEV never shares a run with the cameras."""
    view = layout.img_h * layout.img_w
    bounds = [(0, layout.num_bev, 0)] + [(layout.num_bev + i * view, layout.num_bev + (i + 1) * view, 1)
                                         for i in range(layout.num_views)]
    runs: list[list[int]] = []
    for (start, end, kind), pad in zip(bounds, padded):
        if pad:
            continue
        if runs and runs[-1][1] == start and (runs[-1][2] == kind or not split_bev):
            runs[-1][1] = end
        else:
            runs.append([start, end, kind])
    return [tuple(r) for r in runs]


class _Windows:
    """One sample's window entries as a fixed CSR pattern (Q rows, N entries per row)."""

    def __init__(self, keys: Tensor, num_keys: int) -> None:
        nq, self.n = keys.shape
        self.crow = torch.arange(0, nq * self.n + 1, self.n, device=keys.device)
        self.col = keys.reshape(-1)
        self.shape = (nq, num_keys)
        self._transposed: tuple[Tensor, Tensor, Tensor] | None = None

    def csr(self, values: Tensor) -> Tensor:
        """(Q, K) sparse matrix with ``values`` (Q, N) at the window entries."""
        return torch.sparse_csr_tensor(self.crow, self.col, values.reshape(-1), self.shape, check_invariants=False)

    def csr_t(self, values: Tensor) -> Tensor:
        """(K, Q): the transpose of ``csr(values)``, its pattern sorted once per sample
        (``csr(values).t() @ x`` re-sorts on every call: measured 10x slower)."""
        if self._transposed is None:
            order = torch.argsort(self.col, stable=True)
            counts = torch.bincount(self.col, minlength=self.shape[1])
            crow = torch.zeros(self.shape[1] + 1, dtype=self.crow.dtype, device=self.col.device)
            crow[1:] = torch.cumsum(counts, 0)
            self._transposed = (order, crow, torch.div(order, self.n, rounding_mode="floor"))
        order, crow, rows = self._transposed
        return torch.sparse_csr_tensor(crow, rows, values.reshape(-1)[order], self.shape[::-1],
                                       check_invariants=False)

    def sample(self, a: Tensor, b: Tensor) -> Tensor:
        """(Q, N): a[q] . b[key(q, n)] for a (Q, d), b (K, d) (SDDMM, nothing Q x K)."""
        pattern = self.csr(a.new_zeros(self.shape[0] * self.n))
        return torch.sparse.sampled_addmm(pattern, a, b.t(), beta=0.0).values().view(self.shape[0], self.n)


def _window_forward(q: Tensor, k: Tensor, v: Tensor, win: _Windows, extra: Tensor, scale: float,
                    keep_weights: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """One sample's window copies, every head. q: (h, Q, d); k, v: (h, K, d); extra: (Q, N)
    ``log(expm1(b))`` on valid entries, -PAD on invalid ones (which point at key 0).
    Returns log Z_W (h, Q), o_W (h, Q, d) and, with ``keep_weights`` (for the backward),
    the entry weights p (h, Q, N)."""
    lses, outs, probs = [], [], []
    for i in range(q.shape[0]):
        logits = win.sample(q[i] * scale, k[i]) + extra
        lse = torch.logsumexp(logits, dim=-1)
        p = torch.exp(logits - lse[:, None])
        lses.append(lse)
        outs.append(win.csr(p) @ v[i])
        if keep_weights:
            probs.append(p)
    return torch.stack(lses), torch.stack(outs), torch.stack(probs) if keep_weights else None


def _merge(lses: list[Tensor], outs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Parts (l_r, o_r) -> (out (h, Q, d), part weights (P, h, Q)); 0 where no part has a key."""
    lse = torch.stack(lses)                                              # (P, h, Q)
    m = lse.amax(0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(lse - m)
    den = e.sum(0)
    w = torch.where(den > 0, e / den.clamp(min=torch.finfo(e.dtype).tiny), 0.0)
    return (w[..., None] * torch.stack(outs)).sum(0), w


class _SegmentLseAttention(torch.autograd.Function):
    """Forward: per-run flash attention + window part, merged by log-sum-exp. Backward
    (exact, no Q x K either): the whole softmax's score gradient restricted to part r is
    ``P_r w_r (dO . v - dO . O)``, which is what the flash backward kernel computes for
    the run when given ``grad_out = w_r dO`` and the *merged* output O in place of the run's
    own (it only uses ``out`` for ``rowsum(dO * out)``); the window part's is the same
    expression on its entries (SDDMM + CSR products). A part's log-sum-exp bias gets
    ``w_r (dO . o_r - dO . O)``; a window entry's logit gets its score gradient."""

    @staticmethod
    def forward(ctx, q, k, v, bev_bias, cam_bias, extra, keys, empty, segment_pad, layout, local, scale):
        b, h, nq, d = q.shape
        out = q.new_zeros(b, h, nq, d)
        backward = any(ctx.needs_input_grad[:6])        # else keep nothing for it
        saved = []
        for i in range(b):
            runs = _runs(layout, segment_pad[i].tolist(), split_bev=not local)
            lses, raw_lses, outs = [], [], []
            for start, end, kind in runs:
                o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q[i:i + 1], k[i:i + 1, :, start:end], v[i:i + 1, :, start:end], scale=scale)
                raw_lses.append(lse[0])
                lses.append(lse[0] if local else lse[0] + (bev_bias if kind == 0 else cam_bias)[i])
                outs.append(o[0])
            win = probs = None
            if local:
                win = _Windows(keys[i], k.shape[2])
                lse_w, o_w, probs = _window_forward(q[i], k[i], v[i], win, extra[i], scale, backward)
                lses.append(lse_w.masked_fill(empty[i], float("-inf")))
                outs.append(o_w)
            if not lses:
                saved.append(None)
                continue                                                     # every key masked: 0
            out[i], w = _merge(lses, outs)
            saved.append((runs, raw_lses, outs, w, win, probs) if backward else None)
        ctx.save_for_backward(q, k, v, out)
        ctx.saved, ctx.local, ctx.scale = saved, local, scale
        ctx.has_bias = bev_bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out = ctx.saved_tensors
        dq = torch.zeros_like(q)
        b, h, nq, _ = q.shape
        grads_kv: list[Tensor] = []                      # [dk, dv] once allocated

        def kv_grads() -> list[Tensor]:
            if not grads_kv:
                grads_kv.extend((torch.zeros_like(k), torch.zeros_like(v)))
            return grads_kv

        def add_kv(i: int, start: int, end: int, gk: Tensor, gv: Tensor) -> None:
            # A run over every key of a batch of one: the kernel's gradients are dk, dv
            # themselves (zeros + add would hold a second K x d copy of each at the peak).
            if not grads_kv and b == 1 and start == 0 and end == k.shape[2]:
                grads_kv.extend((gk, gv))
                return
            dk, dv = kv_grads()
            dk[i, :, start:end] += gk[0]
            dv[i, :, start:end] += gv[0]

        d_bev = q.new_zeros(b, nq) if ctx.has_bias else None
        d_cam = q.new_zeros(b, nq) if ctx.has_bias else None
        d_extra = None
        grad_out = grad_out.contiguous()
        with _csr_beta_quiet():
            for i, item in enumerate(ctx.saved):
                if item is None:
                    continue
                runs, raw_lses, outs, w, win, probs = item
                go, o_i = grad_out[i], out[i]
                dot_out = (go * o_i).sum(-1)                                 # (h, Q): dO . O
                for r, (start, end, kind) in enumerate(runs):
                    gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                        (w[r][..., None] * go)[None].contiguous(), q[i:i + 1], k[i:i + 1, :, start:end],
                        v[i:i + 1, :, start:end], o_i[None].contiguous(), raw_lses[r][None], 0.0, False,
                        attn_mask=None, scale=ctx.scale)
                    dq[i] += gq[0]
                    add_kv(i, start, end, gk, gv)
                    del gk, gv
                    if ctx.has_bias:
                        g = (w[r] * ((go * outs[r]).sum(-1) - dot_out)).sum(0)   # (Q,) over heads
                        (d_bev if kind == 0 else d_cam)[i] += g
                if ctx.local:
                    ww = w[-1]                                               # (h, Q) window part weight
                    dk, dv = kv_grads()
                    if d_extra is None:
                        d_extra = q.new_zeros(b, nq, win.n)
                    for j in range(h):
                        pw = probs[j] * ww[j][:, None]                       # (Q, N)
                        ds = pw * (win.sample(go[j], v[i, j]) - dot_out[j][:, None])
                        d_extra[i] += ds
                        # in place: a temporary product + add costs a K x d copy per head
                        dq[i, j].addmm_(win.csr(ds), k[i, j], alpha=ctx.scale)
                        dk[i, j].addmm_(win.csr_t(ds), q[i, j], alpha=ctx.scale)
                        dv[i, j].addmm_(win.csr_t(pw), go[j])
        dk, dv = kv_grads()
        return dq, dk, dv, d_bev, d_cam, d_extra, None, None, None, None, None, None


def segment_lse_attention(q: Tensor, k: Tensor, v: Tensor, aqr: AqrBias, segment_pad: Tensor,
                          scale: float) -> Tensor:
    """Same result as the dense reference, (B, h, Q, d), differentiable in q, k, v and the
    AQR bias (router weights). q: (B, h, Q, d); k, v: (B, h, K, d); segment_pad:
    (B, 1 + views) bool. Queries with no key and no window entry get 0."""
    lay = aqr.layout
    local = aqr.mode == "local"
    bev = cam = extra = keys = empty = None
    if local:
        keys, values, valid = local_window_entries(aqr)                      # (B, Q, N)
        seg_of_key = segment_index(lay, q.device)
        valid = valid & ~torch.gather(segment_pad, 1, seg_of_key[keys.flatten(1)]).view_as(keys)
        extra = torch.log(torch.expm1(values.clamp(min=1e-12))).to(q.dtype).masked_fill(~valid, -PAD)
        keys = keys.masked_fill(~valid, 0)
        empty = ~valid.any(-1)
    else:
        bev, cam = (x.to(q.dtype) for x in global_biases(aqr))              # (B, Q) each
    with _csr_beta_quiet():
        return _SegmentLseAttention.apply(q, k, v, bev, cam, extra, keys, empty, segment_pad, lay, local, scale)
