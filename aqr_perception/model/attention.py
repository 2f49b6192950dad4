"""Multi-head attention with the AQR bias behind one function.

:func:`aqr_cross_attention` is the single entry point for the decoder's
cross-attention; the implementation is chosen by name (``ModelConfig.attention``) so a
faster exact one can replace the dense reference without touching the decoder. The
decoder's self-attention follows the same name (:func:`masked_attention`: "fused" is
PyTorch's SDPA; measured on the tiny model's 200 queries on CPU: 0.2 vs 0.4-0.7 ms a call).

Layouts: batch first. q: (B, h, Q, d), k and v: (B, h, K, d); masks are additive float
tensors (0 = attend, -inf = masked) or boolean (True = masked, as in
``nn.MultiheadAttention``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aqr_perception.model.aqr import PAD, AqrBias, dense_bias


def to_float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Boolean mask (True = masked) -> additive float mask; float masks pass through."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def attention_reference(q: Tensor, k: Tensor, v: Tensor, float_mask: Tensor | None = None,
                        dropout_p: float = 0.0) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` written out; fully masked rows give 0, not NaN.

    float_mask broadcasts to (B, h, Q, K).
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if float_mask is not None:
        scores = scores + float_mask
    # a row with every key masked has no distribution: define its output as 0
    row_max = scores.amax(dim=-1, keepdim=True)
    dead = torch.isneginf(row_max)
    weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def padding_to_float(key_padding_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, K) bool (True = missing key) -> (B, 1, 1, K) additive mask."""
    if key_padding_mask is None:
        return None
    return to_float_mask(key_padding_mask, dtype)[:, None, None, :]


def _dense(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, aqr: AqrBias | None,
           dropout_p: float) -> Tensor:
    mask = padding_to_float(key_padding_mask, q.dtype)
    if aqr is not None:
        bias = dense_bias(aqr).to(q.dtype)[:, None]          # (B, 1, Q, K), same for every head
        mask = bias if mask is None else mask + bias
    return attention_reference(q, k, v, mask, dropout_p)


def _fused(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, aqr: AqrBias | None,
           dropout_p: float) -> Tensor:
    from aqr_perception.model.fused_attention import fused_aqr_attention

    return fused_aqr_attention(q, k, v, key_padding_mask, aqr, dropout_p)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor, key_padding_mask: Tensor | None,
                     impl: str = "dense", dropout_p: float = 0.0) -> Tensor:
    """Attention with a (Q, K) mask shared by every sample and head (the DN mask of
    self-attention; bool, True = masked, or additive float) and key padding: (B, h, Q, d).
    Queries whose keys are all masked get 0. "dense": :func:`attention_reference`;
    "fused": PyTorch's fused SDPA kernels, the masked (-inf) logits at -PAD instead (``exp``
    is exactly 0 there too; a row of -inf can give NaN in CUDA kernels, a row of -PAD a
    finite mean that is then zeroed)."""
    mask = to_float_mask(attn_mask, q.dtype)
    pad = padding_to_float(key_padding_mask, q.dtype)
    mask = mask if pad is None else mask + pad
    if _implementation(impl) is _dense:
        return attention_reference(q, k, v, mask, dropout_p)
    masked = torch.isneginf(mask)
    dead = masked.all(-1, keepdim=True)                           # (B, 1, Q, 1) with padding, else (Q, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.masked_fill(masked, -PAD), dropout_p=dropout_p)
    return out.masked_fill(dead, 0.0)


#: "dense" is the reference (builds the (B, Q, K) bias); "fused" is exact without it
#: (cross-attention: fused_attention.py; self-attention: PyTorch's SDPA).
IMPLEMENTATIONS = {"dense": _dense, "fused": _fused}


def aqr_cross_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                        aqr: AqrBias | None = None, impl: str = "dense", dropout_p: float = 0.0) -> Tensor:
    """Cross-attention with key padding and the AQR bias: (B, h, Q, d).

    Equals ``softmax(q k^T / sqrt(d) + padding + bias) v`` with the bias of
    :func:`aqr_perception.model.aqr.dense_bias`; queries whose keys are all masked get 0.
    """
    return _implementation(impl)(q, k, v, key_padding_mask, aqr, dropout_p)


def _implementation(impl: str):
    try:
        return IMPLEMENTATIONS[impl]
    except KeyError:
        raise ValueError(f"unknown attention implementation {impl!r}; known: {sorted(IMPLEMENTATIONS)}") from None


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with ``nn.MultiheadAttention``'s parameters.

    ``in_proj_weight`` (3C, C), ``in_proj_bias`` (3C), ``out_proj`` Linear(C, C): a state
    dict loads into ``nn.MultiheadAttention(C, h, batch_first=True)`` unchanged (the tests
    use that as the reference).
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dims, embed_dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dims))
        self.out_proj = nn.Linear(embed_dims, embed_dims)
        self.attn_drop = attn_drop
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, aqr: AqrBias | None = None,
                impl: str = "dense") -> Tensor:
        """query (B, Q, C), key/value (B, K, C) -> (B, Q, C).

        attn_mask: (Q, K) bool or float, applied to every sample and head (the DN mask
        of self-attention). key_padding_mask: (B, K) bool. aqr: the cross-attention bias.
        """
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q))
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        drop = self.attn_drop if self.training else 0.0
        if attn_mask is None:
            out = aqr_cross_attention(q, k, v, key_padding_mask, aqr, impl, drop)
        else:
            if aqr is not None:
                raise ValueError("the AQR bias belongs to cross-attention, attn_mask to self-attention")
            out = masked_attention(q, k, v, attn_mask, key_padding_mask, impl, drop)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.embed_dims))
