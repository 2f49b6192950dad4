"""LiDAR-triggered camera association (stands in for message_filters; plain Python).

Per camera the latest few images are kept. Each point cloud picks, per camera, the
image whose (offset-corrected) stamp is nearest to the cloud's stamp; a camera whose
nearest image is farther than ``max_image_age_s`` (either side) -- or that has sent
nothing -- is *stale*: its keys are masked in the model instead of dropping the frame.
A cloud may overtake the images of its own instant in transport: ``cameras_in_flight``
names the live cameras whose newest image is older than the cloud, so that the caller
can wait for a later candidate (as message_filters' ApproximateTime does).
Time jumps are detected per source, on offset-corrected stamps: a camera whose own
stamps jump back by more than ``time_jump_back_s`` (its driver restarted, a looping bag)
drops only its own buffer; a cloud that jumps back (a looping bag, a simulation reset)
drops the buffered images that lie that far after it. A camera whose clock is merely off
never resets anything: its images are too far from the clouds, so it alone is stale,
with the gap as the reason. Counters account for every image received.

No rclpy here: stamps are integer nanoseconds and payloads are opaque, so the dataset
reader uses the same logic as the node.
"""
from __future__ import annotations

import copy
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aqr_perception.config import SyncConfig
from aqr_perception.stamps import NS


@dataclass
class Association:
    """Result of one cloud: chosen image per camera (None = stale) and why."""

    stamp_ns: int
    images: dict[str, Any]
    image_stamps_ns: dict[str, int | None]
    stale: dict[str, str]                 # camera -> reason ("no image yet", "nearest image 0.31 s away")

    @property
    def fresh_cameras(self) -> list[str]:
        return [c for c, img in self.images.items() if img is not None]


@dataclass
class SyncCounters:
    """Every image is counted once as received and at most once as used."""

    images_received: dict[str, int] = field(default_factory=dict)
    images_used: dict[str, int] = field(default_factory=dict)
    images_evicted_unused: dict[str, int] = field(default_factory=dict)
    images_out_of_order: dict[str, int] = field(default_factory=dict)
    stale_per_camera: dict[str, int] = field(default_factory=dict)
    camera_time_jumps: dict[str, int] = field(default_factory=dict)
    clouds: int = 0
    clouds_out_of_order: int = 0
    time_jumps: int = 0                   # of the LiDAR clock (the reference): association resets


class LidarTriggeredSync:
    """Thread-safe association of camera images to LiDAR sweeps."""

    def __init__(self, cameras: list[str], cfg: SyncConfig) -> None:
        if cfg.camera_time_offsets_s and len(cfg.camera_time_offsets_s) != len(cameras):
            raise ValueError(f"sync.camera_time_offsets_s has {len(cfg.camera_time_offsets_s)} entries for "
                             f"{len(cameras)} cameras")
        self.cameras = list(cameras)
        self.cfg = cfg
        offsets = cfg.camera_time_offsets_s or [0.0] * len(cameras)
        self._offset_ns = {c: int(round(o * NS)) for c, o in zip(cameras, offsets)}
        self._window_ns = int(round(cfg.max_image_age_s * NS))
        self._jump_ns = int(round(cfg.time_jump_back_s * NS))
        self._buffers: dict[str, deque] = {c: deque() for c in cameras}
        self._used: dict[str, set[int]] = {c: set() for c in cameras}
        self._latest_cloud_ns: int | None = None
        self._lock = threading.Lock()
        self.counters = SyncCounters(**{k: {c: 0 for c in cameras} for k in (
            "images_received", "images_used", "images_evicted_unused", "images_out_of_order", "stale_per_camera",
            "camera_time_jumps")})

    # --------------------------------------------------------------- input
    def _evict(self, camera: str, after_ns: int | None = None) -> None:
        """Drop ``camera``'s buffered images (those with a corrected stamp after ``after_ns``)."""
        buf, off = self._buffers[camera], self._offset_ns[camera]
        keep = [(s, p) for s, p in buf if after_ns is not None and s + off <= after_ns]
        for stamp, _ in buf:
            if after_ns is None or stamp + off > after_ns:
                if stamp not in self._used[camera]:
                    self.counters.images_evicted_unused[camera] += 1
                self._used[camera].discard(stamp)
        buf.clear()
        buf.extend(keep)

    def _cloud_jumped(self, stamp_ns: int) -> bool:
        """A cloud far behind the newest one: images that far after it are of another run."""
        if self._latest_cloud_ns is not None and stamp_ns < self._latest_cloud_ns - self._jump_ns:
            for c in self.cameras:
                self._evict(c, after_ns=stamp_ns + self._jump_ns)
            self._latest_cloud_ns = stamp_ns
            self.counters.time_jumps += 1
            return True
        self._latest_cloud_ns = stamp_ns if self._latest_cloud_ns is None else max(self._latest_cloud_ns, stamp_ns)
        return False

    def add_image(self, camera: str, stamp_ns: int, payload: Any) -> None:
        """Store an image (payload is whatever the caller needs later, e.g. the message)."""
        with self._lock:
            self.counters.images_received[camera] += 1
            buf = self._buffers[camera]
            if buf and stamp_ns < buf[-1][0] - self._jump_ns:     # this camera's own clock went back
                self._evict(camera)
                self.counters.camera_time_jumps[camera] += 1
            if buf and stamp_ns <= buf[-1][0]:
                # out of order or duplicate: keep it only if it is new, in stamp order
                self.counters.images_out_of_order[camera] += 1
                if any(s == stamp_ns for s, _ in buf):
                    self.counters.images_evicted_unused[camera] += 1
                    return
                buf.append((stamp_ns, payload))
                items = sorted(buf, key=lambda x: x[0])
                buf.clear()
                buf.extend(items)
            else:
                buf.append((stamp_ns, payload))
            while len(buf) > self.cfg.image_buffer_size:
                old_stamp, _ = buf.popleft()
                if old_stamp in self._used[camera]:
                    self._used[camera].discard(old_stamp)
                else:
                    self.counters.images_evicted_unused[camera] += 1

    def cameras_in_flight(self, stamp_ns: int) -> list[str]:
        """Live cameras whose image for this cloud may still be on its way: the newest
        (offset-corrected) image is older than the cloud but inside ``max_image_age_s``.

        A camera that has sent nothing, or nothing that recent, is down: not listed.
        """
        late = []
        with self._lock:
            for c in self.cameras:
                buf = self._buffers[c]
                if buf and stamp_ns - self._window_ns <= buf[-1][0] + self._offset_ns[c] < stamp_ns:
                    late.append(c)
        return late

    def live_cameras(self, stamp_ns: int) -> list[str]:
        """Cameras with an image within ``max_image_age_s`` before the cloud, or any later one."""
        with self._lock:
            return [c for c in self.cameras
                    if self._buffers[c] and self._buffers[c][-1][0] + self._offset_ns[c] >= stamp_ns - self._window_ns]

    def associate(self, stamp_ns: int) -> Association:
        """Pick per camera the image nearest to the cloud stamp within the window."""
        with self._lock:
            self.counters.clouds += 1
            previous = self._latest_cloud_ns
            if not self._cloud_jumped(stamp_ns) and previous is not None and stamp_ns < previous:
                self.counters.clouds_out_of_order += 1
            images: dict[str, Any] = {}
            stamps: dict[str, int | None] = {}
            stale: dict[str, str] = {}
            for c in self.cameras:
                buf = self._buffers[c]
                if not buf:
                    images[c], stamps[c] = None, None
                    stale[c] = "no image received yet" if self.counters.images_received[c] == 0 \
                        else "no image since the last reset"
                    self.counters.stale_per_camera[c] += 1
                    continue
                off = self._offset_ns[c]
                s, payload = min(buf, key=lambda x: abs(x[0] + off - stamp_ns))
                gap = s + off - stamp_ns
                if abs(gap) > self._window_ns:
                    images[c], stamps[c] = None, None
                    stale[c] = f"nearest image {gap / NS:+.3f} s from the cloud (limit {self.cfg.max_image_age_s} s)"
                    self.counters.stale_per_camera[c] += 1
                    continue
                images[c], stamps[c] = payload, s
                if s not in self._used[c]:
                    self._used[c].add(s)
                    self.counters.images_used[c] += 1
            return Association(stamp_ns, images, stamps, stale)

    def counters_now(self) -> SyncCounters:
        """A copy of the counters, taken under the lock (for differences over time)."""
        with self._lock:
            return copy.deepcopy(self.counters)

    def reset(self) -> None:
        with self._lock:
            for c in self.cameras:
                self._buffers[c].clear()
                self._used[c].clear()
            self._latest_cloud_ns = None
