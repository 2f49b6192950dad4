"""The last decoder layer decoded into numpy with one device-to-host copy.

On CUDA every host read waits for the GPU and costs a round trip. Decoding through
:meth:`CmtAqrDetector.decode` and copying its tensors reads the finiteness flags, indexes
with boolean masks (each a ``nonzero``), reads ``has_input`` and copies six arrays: about
ten waits a frame. Here everything a frame's result needs (the top-k candidates, their keep
mask, their queries' AQR weights, ``has_input`` and whether the outputs are finite) is
packed into one float32 tensor on the device and copied once; the masking is done in numpy.
The result equals :meth:`CmtAqrDetector.decode`'s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aqr_perception.config import DecodeConfig
from aqr_perception.detections import FrameDetections
from aqr_perception.model.box_coder import topk_candidates
from aqr_perception.model.detector import DetectorOutput

#: columns of the packed tensor before the AQR weights: box (9), score, label, query, keep
BOX, SCORE, LABEL, QUERY, KEEP, WEIGHTS = slice(0, 9), 9, 10, 11, 12, 13


@dataclass
class HostDecode:
    """numpy result of a batch: ``frames`` (one FrameDetections per sample; empty where
    ``has_input`` is False), ``has_input`` (B,) bool, and ``finite``: whether the last
    layer's logits and box codes of the whole batch were all finite (if not, ``frames``
    is meaningless and must not be published)."""

    frames: list[FrameDetections]
    has_input: np.ndarray
    finite: bool


def pack_last_layer(out: DetectorOutput, decode: DecodeConfig) -> torch.Tensor:
    """Everything :func:`decode_to_host` needs, on ``out``'s device, without a host read.

    Returns (B, K, 13 + 2 L + 2) float32, K = min(topk, Q * num_classes): per candidate the
    box (9), score, label, query, keep (1.0 or 0.0), lidar_weight (L), camera_weight (L);
    the last two columns repeat the sample's has_input and the batch's finiteness. Labels
    and query indices are exact in float32 (below 2**24)."""
    cls, code = out.cls_logits[-1], out.bbox_code[-1]                    # (B, Q, ncls), (B, Q, 10)
    finite = (torch.isfinite(cls).all() & torch.isfinite(code).all()).float()
    rows = []
    for i in range(cls.shape[0]):
        boxes, scores, labels, query, keep = topk_candidates(cls[i], code[i], decode.topk, decode.score_threshold,
                                                             decode.post_center_range)
        k = scores.shape[0]
        rows.append(torch.cat([boxes.float(), scores.float()[:, None], labels.float()[:, None],
                               query.float()[:, None], keep.float()[:, None],
                               out.lidar_weight[:, i, query].T.float(), out.camera_weight[:, i, query].T.float(),
                               out.has_input[i].float().expand(k, 1), finite.expand(k, 1)], dim=1))
    return torch.stack(rows)


def decode_to_host(out: DetectorOutput, decode: DecodeConfig) -> HostDecode:
    """:meth:`CmtAqrDetector.decode` of ``out`` as numpy, through one copy of
    :func:`pack_last_layer`'s tensor."""
    packed = pack_last_layer(out, decode).cpu().numpy()                    # (B, K, C): the one host read
    layers = (packed.shape[2] - WEIGHTS - 2) // 2
    has_input = packed[:, 0, -2] > 0.5
    frames = []
    for i, rows in enumerate(packed):
        rows = rows[(rows[:, KEEP] > 0.5) & has_input[i]]
        weights = rows[:, WEIGHTS:WEIGHTS + 2 * layers]
        frames.append(FrameDetections(rows[:, BOX].copy(), rows[:, SCORE].copy(),
                                      rows[:, LABEL].astype(np.int64), rows[:, QUERY].astype(np.int64),
                                      weights[:, :layers].copy(), weights[:, layers:].copy()))
    return HostDecode(frames, has_input, bool(packed[0, 0, -1] > 0.5))
