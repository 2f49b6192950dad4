"""CMT's transformer decoder with the AQR bias in every cross-attention.

Post-norm layers ``self_attn, norm, cross_attn, norm, ffn, norm``; a shared final
LayerNorm on every layer's output (the intermediate outputs feed the per-layer
losses). Self-attention carries the DN mask, cross-attention the key padding mask and
the AQR bias. Reference points are not refined between layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aqr_perception.config import ModelConfig
from aqr_perception.model.aqr import AqrBias, AqrRouter, MemoryLayout, QueryProjection, local_windows
from aqr_perception.model.attention import MultiheadAttention


class DecoderLayer(nn.Module):
    """One post-norm decoder layer (dropout 0.1 on attention weights and on each residual branch)."""

    def __init__(self, embed_dims: int, num_heads: int, ffn_dims: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.cross_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])
        self.ffn = nn.Sequential(nn.Linear(embed_dims, ffn_dims), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dims, embed_dims))
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_key: Tensor,
                self_mask: Tensor | None, key_padding_mask: Tensor | None, aqr: AqrBias | None,
                impl: str) -> Tensor:
        """query/query_pos (B, T, C); memory (B, K, C) values; memory_key = memory + key PE."""
        q = query + query_pos
        x = self.norms[0](query + self.dropout(self.self_attn(q, q, query, attn_mask=self_mask, impl=impl)))
        x = self.norms[1](x + self.dropout(self.cross_attn(x + query_pos, memory_key, memory,
                                                             key_padding_mask=key_padding_mask, aqr=aqr,
                                                             impl=impl)))
        return self.norms[2](x + self.dropout(self.ffn(x)))


@dataclass
class DecoderOutput:
    """features: (L, B, T, C) normalised outputs of every layer;
    lidar_weight, camera_weight: (L, B, T) router weights per layer (ones/NaN-free
    placeholders of 0.5 when AQR is off)."""

    features: Tensor
    lidar_weight: Tensor
    camera_weight: Tensor


class AqrDecoder(nn.Module):
    """Decoder stack + AQR routers (one per layer, or one shared)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        t = cfg.transformer
        self.layers = nn.ModuleList([DecoderLayer(t.embed_dims, t.num_heads, t.ffn_dims, t.dropout)
                                     for _ in range(t.num_layers)])
        self.post_norm = nn.LayerNorm(t.embed_dims)
        self.aqr_cfg = cfg.aqr
        self.impl = cfg.attention
        # "fixed" keeps the bias (and its windows) but replaces the router by constant weights
        self.fixed_weight = torch.sigmoid(torch.tensor(cfg.aqr.init_logit)).item()
        if cfg.aqr.learned_routing:
            n = t.num_layers if cfg.aqr.per_layer else 1
            self.routers = nn.ModuleList([AqrRouter(t.embed_dims, cfg.aqr) for _ in range(n)])
        else:
            self.routers = nn.ModuleList()

    def forward(self, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, layout: MemoryLayout,
                projection: QueryProjection, key_padding_mask: Tensor | None, self_mask: Tensor | None,
                lidar_available: Tensor, camera_available: Tensor,
                segment_padding: Tensor | None = None) -> DecoderOutput:
        """
        Args:
            query_pos: (B, T, C) query position encodings (content queries start at 0).
            memory, memory_pos: (B, K, C).  key_padding_mask: (B, K) bool.
            projection: router inputs per query (B, T); lidar_available (B,), camera_available (B, T).
            segment_padding: (B, 1 + V) bool, ``key_padding_mask`` per segment when the
                caller knows it (:attr:`AqrBias.segment_padding`).
        """
        query = torch.zeros_like(query_pos)
        memory_key = memory + memory_pos
        outs, lws, cws = [], [], []
        a = self.aqr_cfg
        # the local windows follow the reference points, which no layer refines: once for all layers
        windows = (local_windows(projection, layout, a.bev_window, a.camera_window)
                   if a.enabled and a.mode == "local" else None)
        for i, layer in enumerate(self.layers):
            aqr = None
            if a.enabled:
                if self.routers:
                    router = self.routers[i if len(self.routers) > 1 else 0]
                    lw, cw = router(query, query_pos, memory, projection, layout, lidar_available, camera_available)
                else:
                    lw = cw = query_pos.new_full(query_pos.shape[:2], self.fixed_weight)
                aqr = AqrBias(mode=a.mode, strength=a.strength, lidar_weight=lw, camera_weight=cw, layout=layout,
                              projection=projection, bev_window=a.bev_window, camera_window=a.camera_window,
                              windows=windows, segment_padding=segment_padding)
            else:
                lw = cw = query_pos.new_full(query_pos.shape[:2], 0.5)
            query = layer(query, query_pos, memory, memory_key, self_mask, key_padding_mask, aqr, self.impl)
            outs.append(self.post_norm(query))
            lws.append(lw)
            cws.append(cw)
        return DecoderOutput(torch.stack(outs), torch.stack(lws), torch.stack(cws))
