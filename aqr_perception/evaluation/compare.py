"""Two runs' detections of the same frames, matched one to one: how far another runtime
(bf16, onnxruntime) moves the reference's detections.

Ranks are not compared: a small score change reorders detections of similar scores. The
reference's detections scoring at least ``confident`` are matched (Hungarian, by centre
distance in the LiDAR frame, same class only) to the other run's scoring at least half
that, since a score near the cut may cross it; a pair further apart than ``near_m`` counts
as unmatched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    from aqr_perception.evaluation.answers import FrameAnswer


@dataclass
class DetectionMatch:
    """The matched pairs of all frames.

    total: the reference's confident detections; unmatched: those without a partner
    within ``near_m`` (per frame token in ``unmatched_frames``);
    box_diff: (M, 6) |difference| of x, y, z, l, w, h in metres of the M matched pairs;
    score_diff: (M,) |difference| of their scores;
    confident, near_m: the thresholds they were matched with.
    """

    total: int
    unmatched: int
    unmatched_frames: list[str]
    box_diff: np.ndarray
    score_diff: np.ndarray
    confident: float
    near_m: float

    def summary(self) -> str:
        confident, near_m = self.confident, self.near_m
        worst_box = float(self.box_diff.max()) if len(self.box_diff) else 0.0
        worst_score = float(self.score_diff.max()) if len(self.score_diff) else 0.0
        return (f"{self.total} detections scoring >= {confident}, {self.unmatched} without a match within "
                f"{near_m} m; largest centre/size difference {worst_box:.2e} m, score difference {worst_score:.2e}")


def match_detections(reference: dict[str, FrameAnswer], other: dict[str, FrameAnswer], confident: float = 0.1,
                     near_m: float = 0.5) -> DetectionMatch:
    """Match ``other``'s detections to ``reference``'s, frame by frame (same tokens)."""
    total = unmatched = 0
    frames: list[str] = []
    box_diffs, score_diffs = [np.zeros((0, 6))], [np.zeros(0)]
    for token, x in reference.items():
        y = other[token]
        keep_x, keep_y = x.scores >= confident, y.scores >= confident / 2      # any order of detections
        bx, by = x.boxes[keep_x], y.boxes[keep_y]
        nx = len(bx)
        total += nx
        if nx == 0:
            continue
        dist = np.linalg.norm(bx[:, None, :3] - by[None, :, :3], axis=-1)
        other_class = (np.array(x.names)[keep_x][:, None] != np.array(y.names)[keep_y][None, :])
        dist = np.where(other_class, 1e6, dist)                     # same class only
        rows, cols = linear_sum_assignment(dist)
        near = dist[rows, cols] < near_m
        missed = nx - int(near.sum())
        if missed:
            unmatched += missed
            frames.append(token)
        rows, cols = rows[near], cols[near]
        box_diffs.append(np.abs(bx[rows, :6] - by[cols, :6]))
        score_diffs.append(np.abs(x.scores[keep_x][rows] - y.scores[keep_y][cols]))
    return DetectionMatch(total, unmatched, frames, np.concatenate(box_diffs), np.concatenate(score_diffs),
                          confident, near_m)
