"""The node's ``/diagnostics``: three statuses (inputs, processing, model) from its state.

``inputs`` lists every input problem (LiDAR silent for ``lidar_timeout_s``, input
topics published with another message type, masked cameras with their reasons, an empty
sweep, an intensity convention off the model's, sweeps without ego pose, stamps that went
back or arrived out of order in the last period) at the level of the worst one;
``processing`` compares the last frame's time to ``max_processing_time_ms`` and carries
every counter, the cloud repairs and the latest problem text per counter key; ``model``
names the device and checkpoint.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

if TYPE_CHECKING:
    from aqr_perception.config import NodeConfig
    from aqr_perception.frames.sync import SyncCounters
    from aqr_perception.ros.node import AqrPerceptionNode

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def _kv(key: str, value: object) -> KeyValue:
    return KeyValue(key=key, value=str(value))


def _level(value: bytes | int) -> int:
    return ord(value) if isinstance(value, bytes) else value


class NodeDiagnostics:
    """Builds the node's DiagnosticArray; remembers what it already reported (sweeps without
    pose, the sync's counters), so one is made per configured pipeline, from the counters it
    starts with (``sync_baseline``: the new pipeline's, all 0).

    Each period the node first calls :meth:`update_clock_events`: (problem key, text) of the
    stamp events counted since the last period, which it logs (throttled, kept as
    ``last_problem.<key>``), then :meth:`build`, whose inputs status carries them as WARN and
    the sync counters of that same snapshot."""

    def __init__(self, sync_baseline: SyncCounters) -> None:
        self._sweeps_without_pose_seen = 0
        self._sync_seen = sync_baseline
        self.clock_events: list[tuple[str, str]] = []

    def build(self, node: AqrPerceptionNode) -> DiagnosticArray:
        now = time.monotonic()
        arr = DiagnosticArray(status=[self._inputs(node, now), self._processing(node, now), self._model(node)])
        arr.header.stamp = node.get_clock().now().to_msg()
        return arr

    def update_clock_events(self, node: AqrPerceptionNode) -> list[tuple[str, str]]:
        """Stamps that went back or came out of order since the last call, per source."""
        cfg, counters = node.cfg, node.pipeline.sync.counters_now()
        before, self._sync_seen = self._sync_seen, counters
        self.clock_events = self._clock_events(cfg, before, counters)
        return self.clock_events

    @staticmethod
    def _clock_events(cfg: NodeConfig, before: SyncCounters, counters: SyncCounters) -> list[tuple[str, str]]:
        jump, period = f"{cfg.sync.time_jump_back_s:g} s", "in the last diagnostics period"
        events = []
        if (n := counters.time_jumps - before.time_jumps) > 0:
            events.append(("clock:lidar", f"{cfg.lidar_topic}: cloud stamps went back by more than {jump} ({n}x "
                                          f"{period}: a looping bag or a simulation reset); the images buffered "
                                          "after the new time were dropped"))
        if (n := counters.clouds_out_of_order - before.clouds_out_of_order) > 0:
            events.append(("order:lidar", f"{cfg.lidar_topic}: {n} cloud(s) {period} older than the newest one (out "
                                          "of order in transport)"))
        for cam in counters.images_received:
            topic = cfg.image_topic_format.format(camera=cam)
            if (n := counters.camera_time_jumps[cam] - before.camera_time_jumps[cam]) > 0:
                events.append((f"clock:{cam}", f"{topic}: image stamps went back by more than {jump} ({n}x {period}: "
                                               "a driver restart or a looping bag); the camera's buffered images "
                                               "were dropped"))
            if (n := counters.images_out_of_order[cam] - before.images_out_of_order[cam]) > 0:
                events.append((f"order:{cam}", f"{topic}: {n} image(s) {period} not newer than the newest one (out "
                                               "of order, or a repeated stamp, which is dropped)"))
        return events

    def _inputs(self, node: AqrPerceptionNode, now: float) -> DiagnosticStatus:
        cfg, rep, pipeline = node.cfg, node.report, node.pipeline
        problems: list[tuple[bytes, str]] = []
        if node.last_cloud_wall is None:
            problems.append((ERROR, f"no PointCloud2 received on {cfg.lidar_topic}"))
        elif now - node.last_cloud_wall > cfg.lidar_timeout_s:
            problems.append((ERROR, f"no PointCloud2 for {now - node.last_cloud_wall:.1f} s"))
        problems.extend((WARN, text) for text in node.type_mismatches.values())
        if rep.cameras_masked:
            problems.append((WARN, "cameras masked: " + ", ".join(f"{c} ({r})" for c, r in rep.cameras_masked.items())))
        if rep.stamp_ns and rep.lidar_points == 0:
            problems.append((WARN, "LiDAR sweep empty: camera-only detection"))
        if intensity := pipeline.intensity.problem():
            problems.append((WARN, intensity))
        problems.extend((WARN, text) for cam in pipeline.cameras if (text := pipeline.unrectified_camera(cam)))
        sweep_values = []
        if pipeline.multi_sweep:
            sc = pipeline.sweeps.counters
            if sc.frames_without_pose > self._sweeps_without_pose_seen:
                problems.append((WARN, f"no /tf ego pose in {cfg.fixed_frame} for "
                                       f"{sc.frames_without_pose - self._sweeps_without_pose_seen} recent sweep(s): "
                                       "used alone (velocities unreliable)"))
            self._sweeps_without_pose_seen = sc.frames_without_pose
            sweep_values = [_kv("sweeps.per_sample", pipeline.sweeps.sweeps),
                            _kv("sweeps.frames_without_pose", sc.frames_without_pose),
                            _kv("sweeps.history_resets", sc.history_resets),
                            _kv("sweeps.skipped_not_kept", sc.skipped_not_kept),
                            _kv("tf.time_jumps", pipeline.poses.time_jumps)]
            if pipeline.camera_ego_motion:
                sweep_values.append(_kv("ego_motion_fallbacks", pipeline.ego_motion_fallbacks))
        problems.extend((WARN, text) for _, text in self.clock_events)
        level = max((lv for lv, _ in problems), default=OK, key=_level)
        counters = self._sync_seen                              # the snapshot the events came from
        return DiagnosticStatus(
            level=level, name=f"{node.get_name()}: inputs", hardware_id=node.get_name(),
            message="; ".join(t for _, t in problems) or "all inputs fresh", values=[
                _kv("lidar_points", rep.lidar_points), _kv("cameras_used", ",".join(rep.cameras_used)),
                *[_kv(f"stale.{c}", r) for c, r in rep.cameras_masked.items()],
                *[_kv(f"sync.images_received.{c}", n) for c, n in counters.images_received.items()],
                *[_kv(f"sync.images_used.{c}", n) for c, n in counters.images_used.items()],
                *[_kv(f"sync.images_unused.{c}", n) for c, n in counters.images_evicted_unused.items()],
                *[_kv(f"sync.images_out_of_order.{c}", n) for c, n in counters.images_out_of_order.items() if n],
                *[_kv(f"sync.frames_stale.{c}", n) for c, n in counters.stale_per_camera.items()],
                _kv("sync.time_jumps", counters.time_jumps),
                *[_kv(f"sync.camera_time_jumps.{c}", n) for c, n in counters.camera_time_jumps.items() if n],
                _kv("sync.clouds_out_of_order", counters.clouds_out_of_order),
                _kv("sync.clouds_waited_for_inputs", pipeline.input_waits.clouds_waited),
                _kv("sync.input_wait_timeouts", pipeline.input_waits.wait_timeouts), *sweep_values])

    @staticmethod
    def _processing(node: AqrPerceptionNode, now: float) -> DiagnosticStatus:
        cfg, rep = node.cfg, node.report
        ms = rep.stage_ms.get("processing_time_ms", 0.0)
        if node.slow_since is not None and (now - node.slow_since) * 1e3 > cfg.max_consecutive_delay_ms:
            level, text = ERROR, f"slower than {cfg.max_processing_time_ms:.0f} ms for {now - node.slow_since:.1f} s"
        elif ms > cfg.max_processing_time_ms:
            level, text = WARN, f"processing {ms:.0f} ms > {cfg.max_processing_time_ms:.0f} ms"
        else:
            level, text = OK, f"processing {ms:.0f} ms"
        if (wait := rep.stage_ms.get("input_wait_ms", 0.0)) >= 1.0:
            text += f"; the cloud waited {wait:.0f} ms before for inputs in transport"
        return DiagnosticStatus(
            level=level, name=f"{node.get_name()}: processing", message=text, hardware_id=node.get_name(),
            values=[_kv(k, f"{v:.1f}") for k, v in rep.stage_ms.items()]
            + [_kv(k, v) for k, v in sorted(node.counters.items())]
            + [_kv("clouds_in_progress", node.clouds_in_progress())]
            + [_kv(f"cloud_repairs.{k}", v) for k, v in sorted(node.pipeline.cloud_repairs.items())]
            + [_kv(f"last_problem.{k}", v) for k, v in sorted(node.last_problem.items())])

    @staticmethod
    def _model(node: AqrPerceptionNode) -> DiagnosticStatus:
        rt, rep = node.runtime, node.report
        if not rt.trained:
            level, text = WARN, "no checkpoint: untrained weights, detections are meaningless"
        elif rep.stamp_ns and not rep.has_input:
            level, text = ERROR, "no modality available in the last frame: nothing detected"
        else:
            level, text = OK, f"{rt.cfg.name} on {rt.device}"
        return DiagnosticStatus(level=level, name=f"{node.get_name()}: model", message=text,
                                hardware_id=str(rt.device), values=[
            _kv("device", rt.device), _kv("runtime", getattr(rt, "runtime", "torch")),
            _kv("cpu_threads", getattr(rt, "cpu_threads", "")),
            _kv("checkpoint", rt.checkpoint or "none"), _kv("model", rt.cfg.name),
            _kv("last_detections", rep.detections)])
