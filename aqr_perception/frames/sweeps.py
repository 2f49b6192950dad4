"""Multi-sweep LiDAR input: past sweeps moved into the current sweep's frame, with their age.

CMT (like every nuScenes detector that predicts velocity) reads the current sweep plus
the previous ones, ego-motion compensated, each point tagged with the time lag of its
sweep: static objects line up, moving ones leave a trail, and the trail is what the
velocity head learns from. (Stands in for mmdet3d's ``LoadPointsFromMultiSweeps``, which
does the same from nuScenes' ``sweeps`` lists; here the sweeps come one by one from a
bag or a live topic.)

Frames: points in the LiDAR frame of their own sweep; ``lidar_to_fixed`` maps that
frame into a world-fixed frame (odom/map) at the sweep's stamp.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from aqr_perception.stamps import NS


@dataclass
class SweepCounters:
    """What the accumulator did (diagnostics)."""

    frames_without_pose: int = 0     # current sweep had no ego pose: used alone
    history_resets: int = 0          # no pose, LiDAR out, time went backwards or jumped beyond max_age_s
    skipped_not_kept: int = 0        # clouds skipped under load and not kept as history: unreadable, no
    #                                  pose, empty or older than the history


@dataclass
class _Sweep:
    stamp_ns: int
    points: np.ndarray          # (N, 4) own LiDAR frame
    lidar_to_fixed: np.ndarray  # (4, 4)


class SweepAccumulator:
    """Keeps the last ``sweeps - 1`` sweeps (with their ego poses).

    :meth:`add` returns ``(M, 5)`` float32 ``[x, y, z, intensity, time_lag_s]`` in the
    current LiDAR frame: the current sweep (time lag 0) then the past ones, newest first.
    A sweep without an ego pose is returned alone and clears the history (its points
    cannot be related to the others); so is an empty sweep (LiDAR out). Past sweeps older
    than ``max_age_s`` are dropped.
    """

    def __init__(self, sweeps: int, max_age_s: float) -> None:
        if sweeps < 1:
            raise ValueError("sweeps must be >= 1")
        self.sweeps = sweeps
        self.max_age_ns = int(max_age_s * NS)
        self.history: deque[_Sweep] = deque(maxlen=max(0, sweeps - 1))
        self.counters = SweepCounters()

    def add(self, stamp_ns: int, points: np.ndarray, lidar_to_fixed: np.ndarray | None) -> np.ndarray:
        """points: (N, 4) current sweep; returns (M, 5) (see class doc)."""
        pts = np.asarray(points, np.float32)[:, :4]
        current = np.column_stack([pts, np.zeros(len(pts), np.float32)])
        if len(pts) == 0:     # LiDAR out: old sweeps alone would be outside what the model knows
            self._reset()
            return current
        if lidar_to_fixed is None:
            self.counters.frames_without_pose += 1
            self._reset()
            return current
        if self.history and not (0 < stamp_ns - self.history[0].stamp_ns <= self.max_age_ns):
            self._reset()
        parts = [current]
        fixed_to_lidar = np.linalg.inv(lidar_to_fixed)
        for past in self.history:
            age = stamp_ns - past.stamp_ns
            if age > self.max_age_ns:
                break
            T = (fixed_to_lidar @ past.lidar_to_fixed).astype(np.float32)
            xyz = past.points[:, :3] @ T[:3, :3].T + T[:3, 3]
            parts.append(np.column_stack([xyz, past.points[:, 3], np.full(len(xyz), age / NS, np.float32)]))
        self.history.appendleft(_Sweep(stamp_ns, pts, lidar_to_fixed))      # maxlen 0 (one sweep): kept none
        return np.concatenate(parts).astype(np.float32, copy=False)

    def remember(self, stamp_ns: int, points: np.ndarray, lidar_to_fixed: np.ndarray | None) -> None:
        """Keep a sweep as history without producing a sample (a cloud the node had no time
        to run the model on): the next samples still get their recent past sweeps. A sweep
        without pose, empty, or older than the history is not kept."""
        pts = np.asarray(points, np.float32)[:, :4]
        if lidar_to_fixed is None or len(pts) == 0 or (self.history and stamp_ns <= self.history[0].stamp_ns):
            self.counters.skipped_not_kept += 1
            return
        self.history.appendleft(_Sweep(stamp_ns, pts, lidar_to_fixed))

    def _reset(self) -> None:
        if self.history:
            self.counters.history_resets += 1
        self.history.clear()
