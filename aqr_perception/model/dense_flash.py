"""Exact AQR cross-attention for small inference on CPU: the dense bias as the flash kernel's mask.

In local mode at the tiny model's size the (B, 1, Q, K) bias is small (200 queries x 5,680 keys: 4.5 MB
in fp32, shared by the heads), and PyTorch's CPU flash-attention kernel takes an additive
mask that broadcasts over the heads: one kernel call reads it tile by tile next to the
logits, where the segment route (segment_attention.py) runs one flash call per run of
segments plus the window products and a log-sum-exp merge. Measured on the 2-core dev
machine at tiny size (``bench/attention.py --sizes tiny``): 11.1 vs 13.0 ms per call
(unbiased SDPA 5.4 ms); eager ``predict`` 167 -> 150 ms. Its memory: the shared bias,
a quarter of the per-head dense bias at 4 heads, where the segment route holds none.

The bias grows as Q x K: at CMT size (900 x 38,400 keys, R50 800x320) it would be 138 MB
per sample, so above :data:`MAX_BIAS_ENTRIES` the segment route, which builds nothing
Q x K, is taken. No backward: the kernel's backward gives no gradient for the mask, which
carries the router's weights, so training takes the segment route.
"""
from __future__ import annotations

import torch
from torch import Tensor

from aqr_perception.model.aqr import AqrBias, dense_bias

#: the largest bias this route builds, B x Q x K entries (32 MiB in fp32): the tiny model
#: needs 1.1 M; the vehicle models (35 M and more) stay on the segment route
MAX_BIAS_ENTRIES = 1 << 23
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def usable(q: Tensor, k: Tensor, v: Tensor, aqr: AqrBias, dropout_p: float) -> bool:
    """Local mode (in global mode the segment route is as fast: two flash calls without a
    mask), CPU, fp32/fp64, no autograd anywhere (inputs or router weights), no dropout, no
    tracing, and a bias of at most :data:`MAX_BIAS_ENTRIES` entries."""
    b, _, nq, _ = q.shape
    needs_grad = any(t.requires_grad for t in (q, k, v, aqr.lidar_weight, aqr.camera_weight))
    return (aqr.mode == "local" and q.device.type == "cpu" and q.dtype in SUPPORTED_DTYPES and dropout_p == 0.0
            and not needs_grad and b * nq * k.shape[2] <= MAX_BIAS_ENTRIES and not torch.compiler.is_compiling()
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"))


def dense_flash_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, aqr: AqrBias,
                          scale: float) -> Tensor:
    """Same result as the dense reference, (B, h, Q, d), for q (B, h, Q, d), k, v (B, h, K, d),
    key_padding_mask (B, K) bool (True = masked). A sample whose keys are all masked gets 0."""
    mask = dense_bias(aqr).to(q.dtype)[:, None]        # (B, 1, Q, K); local mode: a fresh tensor, filled in place
    padded = key_padding_mask is not None and bool(key_padding_mask.any())
    if padded:
        mask.masked_fill_(key_padding_mask[:, None, None, :], float("-inf"))
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask, scale=scale)[0]
    if padded:
        # a sample with no key: the reference defines its output as 0 (this kernel gives 0
        # too, its zero row sum taken as 1, but that is not its documented contract)
        out.masked_fill_(key_padding_mask.all(1)[:, None, None, None], 0.0)
    return out
