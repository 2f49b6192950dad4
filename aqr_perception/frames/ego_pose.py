"""Time-stamped transforms from /tf, looked up at a sweep's stamp (stands in for the
dynamic half of tf2_ros.Buffer: ``lookupTransform(target, source, time)``).

Each (parent, child) edge keeps its recent samples; a lookup interpolates between the
two samples around the requested instant (linear translation, slerp rotation), as tf2
does, and refuses to extrapolate: an instant after the newest sample is "not yet
available" (the live node waits for it, bounded). No rclpy needed.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from aqr_perception.frames.transforms import RejectedTransform, message_transforms
from aqr_perception.stamps import NS


class EgoPoses:
    """Recent /tf samples per edge; ``edges_at(t)`` gives every edge known at ``t``."""

    def __init__(self, history_s: float = 10.0, max_interval_s: float = 1.0) -> None:
        self.history_ns = int(history_s * NS)
        self.max_interval_ns = int(max_interval_s * NS)   # no interpolation across a longer gap
        self._stamps: dict[tuple[str, str], list[int]] = {}
        self._poses: dict[tuple[str, str], list[np.ndarray]] = {}
        self.newest_ns: int | None = None
        self.time_jumps = 0          # edges whose history restarted: a sample far older than all kept

    def add_message(self, msg) -> list[RejectedTransform]:
        """Add every valid transform of a TFMessage; returns the rejected ones."""
        good, rejected = message_transforms(msg)
        for parent, child, stamp, T in good:
            if not self.add(parent, child, stamp, T):
                rejected.append(RejectedTransform(parent, child, f"stamp {stamp / NS:.3f} s is more than "
                                                  f"{self.history_ns / NS:g} s older than the edge's newest sample "
                                                  "(tf2's TF_OLD_DATA): ignored"))
        return rejected

    def add(self, parent: str, child: str, stamp_ns: int, child_to_parent: np.ndarray) -> bool:
        """Store one sample; False when it is older than the history kept (not stored)."""
        edge = (parent, child)
        stamps = self._stamps.setdefault(edge, [])
        poses = self._poses.setdefault(edge, [])
        if stamps and stamp_ns < stamps[0] - self.history_ns:
            stamps.clear()      # time jumped back (bag restarted): old samples mean nothing now
            poses.clear()
            self.time_jumps += 1
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            poses[i] = child_to_parent
        else:
            stamps.insert(i, stamp_ns)
            poses.insert(i, child_to_parent)
        drop = bisect.bisect_left(stamps, stamps[-1] - self.history_ns)
        del stamps[:drop], poses[:drop]
        if drop > i:                                 # the sample itself was past the history
            return False
        previous = self.newest_ns
        self.newest_ns = stamp_ns if self.newest_ns is None else max(self.newest_ns, stamp_ns)
        if previous is not None and self.newest_ns // NS != previous // NS:   # once a second
            self._forget_stale_edges()
        return True

    def _forget_stale_edges(self) -> None:
        """Drop edges without a sample in the last ``history_s`` (a tracker's object frames
        come and go: without this the buffer only grows)."""
        horizon = self.newest_ns - self.history_ns
        for edge in [e for e, stamps in self._stamps.items() if stamps[-1] < horizon]:
            del self._stamps[edge], self._poses[edge]

    @property
    def edges(self) -> list[tuple[str, str]]:
        """The (parent, child) edges with samples."""
        return list(self._stamps)

    def edges_at(self, stamp_ns: int, only: Iterable[tuple[str, str]] | None = None
                 ) -> dict[tuple[str, str], np.ndarray]:
        """(parent, child) -> child->parent at ``stamp_ns`` for every edge (of ``only``, when
        given) that brackets it."""
        out = {}
        for edge in (self._stamps if only is None else [e for e in only if e in self._stamps]):
            stamps = self._stamps[edge]
            T = self._interpolate(stamps, self._poses[edge], stamp_ns)
            if T is not None:
                out[edge] = T
        return out

    def _interpolate(self, stamps: list[int], poses: list[np.ndarray], t: int) -> np.ndarray | None:
        i = bisect.bisect_left(stamps, t)
        if i < len(stamps) and stamps[i] == t:
            return poses[i]
        if i == 0 or i == len(stamps) or stamps[i] - stamps[i - 1] > self.max_interval_ns:
            return None
        t0, t1 = stamps[i - 1], stamps[i]
        a = (t - t0) / (t1 - t0)
        P0, P1 = poses[i - 1], poses[i]
        T = np.eye(4)
        rots = Rotation.from_matrix(np.stack([P0[:3, :3], P1[:3, :3]]))
        T[:3, :3] = Slerp([0.0, 1.0], rots)([a]).as_matrix()[0]
        T[:3, 3] = (1 - a) * P0[:3, 3] + a * P1[:3, 3]
        return T
