"""Exact AQR cross-attention without the dense (B, heads, Q, K) bias.

The memory is made of segments: the BEV tokens, then each camera view's tokens. The
bias and the key padding the model uses are constant per (query, segment), except for
the local-mode windows. Two exact identities remove the dense bias:

1. **Folding a per-segment constant into the dot product.** With ``e_j`` the one-hot of
   key j's segment, ``q' = [q, c * sqrt(d)]`` and ``k' = [k, e_j]`` give
   ``q'.k' / sqrt(d) = q.k / sqrt(d) + c[segment]``: the global bias, and key padding
   (``c = -PAD``, whose exp underflows to exactly 0), go into a few extra head
   dimensions of a standard ``scaled_dot_product_attention`` call.
2. **Local windows as one extra key.** ``exp(s + b) = exp(s) + exp(s + log(expm1(b)))``,
   so a bias b >= 0 on the window keys W equals the unbiased attention plus extra
   copies of the window keys. Their total weight and mean value are folded into one
   *sentinel* key per query: logit ``log Z_W`` (via identity 1), value one-hot in an
   extra value column. With the SDPA output o' (d + 1 columns),
   ``out = o'[:d] + o'[d] * o_W`` where ``o_W`` is the window keys' own softmax average
   over the logits ``s + log(expm1(b))`` (gathered, a few hundred keys per query).

On CPU (inference and training) a faster exact route is taken instead, without the
extra columns: per-segment attention merged by log-sum-exp, with its own backward
(segment_attention.py); small local-mode inference (the tiny model), whatever its padding,
hands the flash kernel the dense bias as its mask instead (dense_flash.py). Local mode
where those cannot run (CUDA, dropout, fp16/bf16 on CPU, padding that is not constant per
segment) hands SDPA the dense bias as a mask that carries gradients (dense_sdpa.py), up
to a size. This folded route serves the rest: global mode off the CPU, tracing, and
larger local-mode calls.

Everything here is ordinary differentiable torch, so autograd gives exact gradients; SDPA
picks its fused kernels (flash on CPU and CUDA). Memory beyond the unbiased attention:
the extra key/value columns (S = 1 + views (+1) per key) and, in local mode, the
gathered window logits/values in chunks of queries.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.nn import functional as F

from aqr_perception.model import dense_flash, dense_sdpa, segment_attention
from aqr_perception.model.aqr import PAD, AqrBias, MemoryLayout, global_biases, local_window_entries, segment_index

#: the routes in the order :func:`fused_aqr_attention` tries them
ROUTES = ("dense_flash", "segment", "dense_sdpa", "folded")
#: routes skipped within :func:`forced_route`
_skipped: tuple[str, ...] = ()
#: the counters of the :func:`observed_routes` blocks now open
_observers: list[Counter] = []

WINDOW_CHUNK = 32       # queries per gather chunk in local mode on CPU (measured: 32 beats 8..128)
#: on CUDA the gather is memory-bound too but wide chunks keep the GPU busy: per chunk
#: B x h x 256 x N x d values (B = 4, N ~ 450 window keys, d = 32: ~0.5 GB in fp32)
WINDOW_CHUNK_CUDA = 256


def segment_padding(key_padding_mask: Tensor | None, layout: MemoryLayout, batch: int, device) -> Tensor | None:
    """(B, S) bool padding per segment when ``key_padding_mask`` is constant within segments, else None."""
    s = 1 + layout.num_views
    if key_padding_mask is None:
        return torch.zeros(batch, s, dtype=torch.bool, device=device)
    bev = key_padding_mask[:, : layout.num_bev]
    img = key_padding_mask[:, layout.num_bev:].reshape(batch, layout.num_views, -1)
    # a traced graph (torch.export, ONNX) cannot branch on data: there the padding must be
    # per segment, as the detector's memory padding always is (a missing view or sweep)
    if not torch.compiler.is_compiling():
        structured = (bev.all(1) | ~bev.any(1)).all() and (img.all(2) | ~img.any(2)).all()
        if not bool(structured):
            return None
    return torch.cat([bev[:, :1], img[:, :, 0]], dim=1)


def _window_part(q: Tensor, k: Tensor, v: Tensor, aqr: AqrBias, pad: Tensor | None, scale: float
                 ) -> tuple[Tensor, Tensor]:
    """Local mode: log Z_W (B, h, Q) and o_W (B, h, Q, d) of the window copies, in query chunks.

    Memory-bound (a gather of N window keys and values per query): each chunk of queries
    gathers its windows for every sample at once (one indexing op per chunk, not one per
    sample: the per-sample loop made local-mode training on CUDA 2.7x slower than dense).
    """
    keys, values, valid = local_window_entries(aqr)             # (B, Q, N)
    if pad is not None:                                         # padded keys are not in any window
        valid = valid & ~torch.gather(pad, 1, keys.flatten(1)).view_as(keys)
    extra = torch.log(torch.expm1(values.clamp(min=1e-12))).to(q.dtype)   # log(e^b - 1)
    # invalid entries get -PAD, not -inf: exp(-PAD) is exactly 0 next to any real entry, and a
    # query with no valid entry at all (LiDAR dropped, point not in any camera) keeps finite
    # gradients; its log Z_W ~ -PAD makes the sentinel weigh exactly 0 in the main softmax
    extra = extra.masked_fill(~valid, -PAD)
    empty = ~valid.any(-1)                                      # (B, Q)
    b, h, nq, d = q.shape
    n = keys.shape[-1]
    chunk = WINDOW_CHUNK_CUDA if q.is_cuda else WINDOW_CHUNK
    rows = torch.arange(b, device=q.device)[:, None]
    lse_parts, out_parts = [], []
    for start in range(0, nq, chunk):
        sl = slice(start, start + chunk)
        idx = keys[:, sl].reshape(b, -1)                        # (B, c*N)
        c = idx.shape[1] // n
        # advanced indexing around the head slice puts the gathered axis first: (B, c*N, h, d)
        kw = k[rows, :, idx].view(b, c, n, h, d).permute(0, 3, 1, 2, 4)   # (B, h, c, N, d)
        vw = v[rows, :, idx].view(b, c, n, h, d).permute(0, 3, 1, 2, 4)
        logits = torch.matmul(kw, q[:, :, sl, :, None]).squeeze(-1) * scale + extra[:, None, sl]   # (B, h, c, N)
        lse = torch.logsumexp(logits, dim=-1)
        w = torch.exp(logits - lse[..., None])
        lse_parts.append(lse)
        out_parts.append(torch.matmul(w[..., None, :], vw).squeeze(-2))                   # (B, h, c, d)
    lse = torch.cat(lse_parts, 2).masked_fill(empty[:, None], float("-inf"))  # -inf: no window copy
    return lse, torch.cat(out_parts, 2)


@contextmanager
def forced_route(route: str) -> Iterator[None]:
    """Within the block the routes tried before ``route`` are skipped, so that ``route`` is
    taken where it can run (it falls through to the next one where it cannot): tests and
    benchmarks compare the routes on inputs the dispatcher would send elsewhere. For one
    thread at a time (it sets a module-level switch)."""
    global _skipped
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r} (one of {', '.join(ROUTES)})")
    saved, _skipped = _skipped, ROUTES[:ROUTES.index(route)]
    try:
        yield
    finally:
        _skipped = saved


@contextmanager
def observed_routes() -> Iterator[Counter]:
    """Within the block, the calls with an AQR bias per route taken (a Counter by route
    name), so that a benchmark can say what it timed. For one thread at a time, as
    :func:`forced_route`."""
    counts: Counter = Counter()
    _observers.append(counts)
    try:
        yield counts
    finally:
        _observers.remove(counts)


def _taking(route: str) -> None:
    for counts in _observers:
        counts[route] += 1


def _known_segment_padding(key_padding_mask: Tensor | None, aqr: AqrBias, batch: int, device) -> Tensor | None:
    """The caller's :attr:`AqrBias.segment_padding` where it gave one, else :func:`segment_padding`."""
    if aqr.segment_padding is not None:
        return aqr.segment_padding.to(device)
    return segment_padding(key_padding_mask, aqr.layout, batch, device)


def head_dim(width: int, cuda: bool) -> int:
    """The head dim of the folded call for ``width`` used columns: on CUDA the fused
    kernels need one head dim for q, k and v, a multiple of 8."""
    return -(-width // 8) * 8 if cuda else width


def fewer_columns_narrower(d: int, num_views: int, local: bool, cuda: bool) -> bool:
    """Whether the folded call gets a narrower head dim when there is no padding (no
    segment columns in local mode, two in global mode) than with one column per segment.
    Where it does not (CUDA, d = 32, six views: 40 either way), the folded route does not
    look whether there is padding, a host sync."""
    sentinel = 1 if local else 0
    fewest = 0 if local else 2
    return head_dim(d + fewest + sentinel, cuda) < head_dim(d + 1 + num_views + sentinel, cuda)


def any_padding(seg_pad: Tensor) -> bool:
    """Whether any segment of any sample is padded (a host sync on CUDA)."""
    return bool(seg_pad.any())


def fused_aqr_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                        aqr: AqrBias | None, dropout_p: float = 0.0) -> Tensor:
    """Same result as the dense reference, (B, h, Q, d); see the module docstring.

    q: (B, h, Q, d); k, v: (B, h, K, d); key_padding_mask: (B, K) bool (True = masked);
    aqr: compact bias or None. Queries with every key masked get 0, as in the reference.
    """
    b, h, nq, d = q.shape
    nk = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    if aqr is None:
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
        if key_padding_mask is not None:
            out = out.masked_fill(key_padding_mask.all(1)[:, None, None, None], 0.0)
        return out
    lay = aqr.layout
    if "dense_flash" not in _skipped and dense_flash.usable(q, k, v, aqr, dropout_p):
        _taking("dense_flash")
        return dense_flash.dense_flash_attention(q, k, v, key_padding_mask, aqr, scale)
    # the per-segment padding is found out only for the routes that need it, and only where
    # the caller did not give it: checking that the padding is constant within segments is a
    # host sync, six a forward on CUDA
    seg_pad, seg_pad_known = None, False
    if "segment" not in _skipped and segment_attention.usable(q, dropout_p):
        seg_pad, seg_pad_known = _known_segment_padding(key_padding_mask, aqr, b, q.device), True
        if seg_pad is not None:
            _taking("segment")
            return segment_attention.segment_lse_attention(q, k, v, aqr, seg_pad, scale)
    if "dense_sdpa" not in _skipped and dense_sdpa.usable(q, k, aqr):
        _taking("dense_sdpa")
        return dense_sdpa.dense_sdpa_attention(q, k, v, key_padding_mask, aqr, dropout_p, scale)
    _taking("folded")
    if not seg_pad_known:
        seg_pad = _known_segment_padding(key_padding_mask, aqr, b, q.device)
    # queries of a sample whose keys are all masked: the reference defines their output as 0
    all_masked = (key_padding_mask.all(1) if key_padding_mask is not None
                  else torch.zeros(b, dtype=torch.bool, device=q.device))[:, None, None]
    general_mask = None
    if seg_pad is None:      # unstructured padding: SDPA takes it as a broadcast (B, 1, 1, K) mask
        general_mask = ~key_padding_mask[:, None, None, :]
        seg_pad = torch.zeros(b, 1 + lay.num_views, dtype=torch.bool, device=q.device)
    # per (sample, query, segment) additive logit
    local = aqr.mode == "local"
    if aqr.mode == "global":
        bev, cam = global_biases(aqr)
        seg_logit = torch.cat([bev[..., None], cam[..., None].expand(-1, -1, lay.num_views)], -1)  # (B, Q, S)
    else:
        seg_logit = q.new_zeros(b, nq, 1 + lay.num_views)
    seg_logit = seg_logit.to(q.dtype).masked_fill(seg_pad[:, None, :], -PAD)
    seg = segment_index(lay, q.device)
    # fewest extra columns that carry the per-segment logits: none in local mode without
    # padding, [BEV, cameras] in global mode without padding, else one per segment (always
    # when tracing, the check being data-dependent, and where fewer would not narrow the call)
    if (torch.compiler.is_compiling() or not fewer_columns_narrower(d, lay.num_views, local, q.is_cuda)
            or any_padding(seg_pad)):
        cols = seg_logit
    elif local:
        cols, seg = seg_logit[..., :0], None
    else:
        cols, seg = seg_logit[..., :2], seg.clamp(max=1)
    n_seg = cols.shape[-1]
    q_extra = cols * math.sqrt(d)                                                         # (B, Q, n_seg)
    # fused kernels need one head dim for q, k and v (a multiple of 8 on CUDA); each wide
    # tensor is written once: [original | segment columns | sentinel column | zero padding]
    width = d + n_seg + (1 if local else 0)
    dim = head_dim(width, q.is_cuda)
    extra_key = 1 if local else 0
    q2 = q.new_zeros(b, h, nq, dim)
    q2[..., :d] = q
    q2[..., d:d + n_seg] = q_extra[:, None]
    k2 = k.new_zeros(b, h, nk + extra_key, dim)
    k2[:, :, :nk, :d] = k
    if seg is not None:
        k2[:, :, torch.arange(nk, device=q.device), d + seg] = 1.0                         # segment one-hot
    v2 = v.new_zeros(b, h, nk + extra_key, dim)
    v2[:, :, :nk, :d] = v
    if not local:
        out = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=general_mask, dropout_p=dropout_p,
                                             scale=scale)[..., :d]
        return out.masked_fill(all_masked[..., None], 0.0)
    # local mode: window copies folded into one sentinel key per query (the last key)
    lse_w, o_w = _window_part(q, k, v, aqr, key_padding_mask, scale)
    q2[..., width - 1] = lse_w.clamp(min=-PAD) * math.sqrt(d)                             # sentinel logit
    k2[:, :, nk, width - 1] = 1.0
    v2[:, :, nk, d] = 1.0                                        # the sentinel's weight lands in column d
    mask2 = None
    if general_mask is not None:
        mask2 = torch.cat([general_mask, general_mask.new_ones(b, 1, 1, 1)], -1)
    o2 = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask2, dropout_p=dropout_p, scale=scale)
    out = o2[..., :d] + o2[..., d:d + 1] * o_w
    # every key masked and no window copy either
    return out.masked_fill((all_masked & torch.isneginf(lse_w))[..., None], 0.0)
