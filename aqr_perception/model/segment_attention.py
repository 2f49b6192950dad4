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
to, called through its aten op because only that returns the log-sum-exp. Neither that
log-sum-exp nor the sparse products have autograd formulas here, so this path serves
no-grad CPU inference (the node, evaluation); training, CUDA and tracing use the folded
formulation in fused_attention.py. Both are tested against the dense reference.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from aqr_perception.model.aqr import (PAD, AqrBias, MemoryLayout, global_biases, local_window_entries,
                                     segment_index)

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def usable(q: Tensor, dropout_p: float, segment_pad: Tensor | None) -> bool:
    """Whether this path applies: CPU, fp32/fp64, no autograd, no dropout, no tracing,
    padding constant within segments (``segment_pad`` from ``fused_attention.segment_padding``)."""
    return (q.device.type == "cpu" and q.dtype in SUPPORTED_DTYPES and not torch.is_grad_enabled()
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
            and dropout_p == 0.0 and segment_pad is not None and not torch.compiler.is_compiling())


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


def _window_part(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, extra: Tensor, scale: float
                 ) -> tuple[Tensor, Tensor]:
    """One sample's window copies. q: (h, Q, d); k, v: (h, K, d); keys, extra: (Q, N) with
    ``extra = log(expm1(b))`` on valid entries, -PAD on invalid ones (which point at key 0).
    Returns log Z_W (h, Q) and o_W (h, Q, d)."""
    h, nq, d = q.shape
    n = keys.shape[1]
    crow = torch.arange(0, nq * n + 1, n, device=q.device)
    col = keys.reshape(-1)
    lse_heads, out_heads = [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        for i in range(h):
            lse, out = _window_head(q[i], k[i], v[i], crow, col, extra, scale)
            lse_heads.append(lse)
            out_heads.append(out)
    return torch.stack(lse_heads), torch.stack(out_heads)


def _window_head(q: Tensor, k: Tensor, v: Tensor, crow: Tensor, col: Tensor, extra: Tensor, scale: float
                 ) -> tuple[Tensor, Tensor]:
    """One head: q (Q, d), k/v (K, d) -> log Z_W (Q,), o_W (Q, d)."""
    nq, n = extra.shape
    pattern = torch.sparse_csr_tensor(crow, col, q.new_zeros(nq * n), (nq, k.shape[0]), check_invariants=False)
    logits = torch.sparse.sampled_addmm(pattern, q, k.t(), beta=0.0, alpha=scale).values().view(nq, n) + extra
    lse = torch.logsumexp(logits, dim=-1)
    weights = torch.exp(logits - lse[:, None])
    csr = torch.sparse_csr_tensor(crow, col, weights.reshape(-1), (nq, k.shape[0]), check_invariants=False)
    return lse, csr @ v


def segment_lse_attention(q: Tensor, k: Tensor, v: Tensor, aqr: AqrBias, segment_pad: Tensor,
                          scale: float) -> Tensor:
    """Same result as the dense reference, (B, h, Q, d). q: (B, h, Q, d); k, v: (B, h, K, d);
    segment_pad: (B, 1 + views) bool. Queries with no key and no window entry get 0."""
    lay = aqr.layout
    b, h, nq, d = q.shape
    local = aqr.mode == "local"
    if local:
        keys, values, valid = local_window_entries(aqr)                      # (B, Q, N)
        seg_of_key = segment_index(lay, q.device)
        valid = valid & ~torch.gather(segment_pad, 1, seg_of_key[keys.flatten(1)]).view_as(keys)
        extra = torch.log(torch.expm1(values.clamp(min=1e-12))).to(q.dtype).masked_fill(~valid, -PAD)
        keys = keys.masked_fill(~valid, 0)
        empty = ~valid.any(-1)
    else:
        bias = dict(enumerate(b.to(q.dtype) for b in global_biases(aqr)))       # 0: BEV, 1: cameras
    out = q.new_zeros(b, h, nq, d)
    for i in range(b):
        lses, outs = [], []
        for start, end, kind in _runs(lay, segment_pad[i].tolist(), split_bev=not local):
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q[i:i + 1], k[i:i + 1, :, start:end], v[i:i + 1, :, start:end], scale=scale)
            lses.append(lse[0] if local else lse[0] + bias[kind][i])
            outs.append(o[0])
        if local:
            lse_w, o_w = _window_part(q[i], k[i], v[i], keys[i], extra[i], scale)
            lses.append(lse_w.masked_fill(empty[i], float("-inf")))
            outs.append(o_w)
        if not lses:
            continue                                                         # every key masked: 0
        lse = torch.stack(lses)                                              # (P, h, Q)
        m = lse.amax(0)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        w = torch.exp(lse - m)
        den = w.sum(0)
        num = (w[..., None] * torch.stack(outs)).sum(0)
        out[i] = torch.where(den[..., None] > 0, num / den.clamp(min=torch.finfo(q.dtype).tiny)[..., None], 0.0)
    return out
