"""Exact local-mode AQR cross-attention with the dense bias as SDPA's mask, gradients included.

``scaled_dot_product_attention`` takes an additive float mask and, where it requires
gradients, gives its gradient too: on CUDA PyTorch's memory-efficient kernel computes it
in its backward (since PyTorch 2.1; flash takes no mask, and cuDNN is not chosen for a
mask that requires gradients), elsewhere the math kernel does. So the (B, 1, Q, K)
bias of :func:`aqr_perception.model.aqr.dense_bias` (a scatter of the window entries,
differentiable in the router weights) handed to SDPA is the whole attention, forward and
backward, with no gathered copy of the window keys and values.

This serves local mode where the CPU routes cannot run (segment_attention.py: CPU, fp32,
no dropout, padding constant per segment): CUDA training and inference above all, where
the folded route (fused_attention.py) gathers every query's window keys and values and
keeps them for the backward, B x h x Q x N x d twice per layer (R50 800x320, batch 4, 450
window keys: 3.3 GB a layer in fp32). With the memory-efficient kernel a layer keeps the
bias instead, B x Q x K (0.55 GB), and the backward writes the bias gradient per head,
B x h x Q x K, for a moment (4.4 GB). The math kernel (the CPU's; CUDA's where the
memory-efficient one is ruled out) keeps the B x h x Q x K weights, as the dense reference
does, so the CPU takes this route for fewer scores. Above :data:`MAX_SCORES`, and when
tracing, the folded route is taken. Training always gives q gradients (a mask that alone
needs gradients crashed the memory-efficient backward: PyTorch issue 148476).
Measured on the 2-core CPU at the tiny size (bench/attention.py --train, local mode,
forward + backward, two runs): 34-36 ms against the folded route's 132-134 ms and the dense
reference's 49-57 ms.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from aqr_perception.model.aqr import PAD, AqrBias, dense_bias

#: this route takes fewer B x h x Q x K scores than this, per device type. CUDA: the
#: per-head bias gradient of the backward, 8 GiB in fp32, and below it every offset in the
#: memory-efficient kernels fits 32 bits (R50 800x320 training at batch 4 needs 1.1 G, the
#: VoV model's 1.6 G). Elsewhere the math kernel keeps that many weights per layer: 256 MiB
#: (a training sample of the tiny model with its DN queries needs about 6 M)
MAX_SCORES = {"cuda": 1 << 31, "cpu": 1 << 26}


def usable(q: Tensor, k: Tensor, aqr: AqrBias) -> bool:
    """Local mode, not tracing (exported graphs keep the folded route: no Q x K tensor in
    them), and fewer scores than :data:`MAX_SCORES` allows on q's device."""
    b, h, nq, _ = q.shape
    limit = MAX_SCORES.get(q.device.type, MAX_SCORES["cpu"])
    return aqr.mode == "local" and not torch.compiler.is_compiling() and b * h * nq * k.shape[2] < limit


def dense_sdpa_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, aqr: AqrBias,
                         dropout_p: float, scale: float) -> Tensor:
    """Same result as the dense reference, (B, h, Q, d), for q (B, h, Q, d), k, v (B, h, K, d),
    key_padding_mask (B, K) bool (True = masked). Padded keys get -PAD (``exp`` is exactly 0
    next to any real logit; -inf can give NaN in CUDA kernels where a sample has no key
    left); a sample whose keys are all masked gets 0."""
    mask = dense_bias(aqr).to(q.dtype)[:, None]               # (B, 1, Q, K), shared by the heads
    if key_padding_mask is not None:
        mask = mask.masked_fill(key_padding_mask[:, None, None, :], -PAD)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if key_padding_mask is not None:
        out = out.masked_fill(key_padding_mask.all(1)[:, None, None, None], 0.0)
    return out
