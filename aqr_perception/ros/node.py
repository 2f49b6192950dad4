"""The aqr_perception ROS 2 node (executable ``aqr_perception_node``).

PointCloud2 + 6 x (Image | CompressedImage) + CameraInfo + /tf_static in;
vision_msgs/Detection3DArray, DetectionVelocityArray, QueryRouting, MarkerArray,
/diagnostics, debug timings and (optional) per-camera debug images out.

Threads: the executor thread only stores messages (images into the sync buffers, the
newest cloud into a one-slot mailbox); a worker thread turns each cloud into a frame:
association -> conversion -> model -> messages. When the model is slower than the
LiDAR, the newest cloud wins and the replaced ones are counted.

Path of a frame: ``_on_cloud`` -> ``_worker`` -> ``_process`` (ros/conversions.py,
ros/sync.py, data/preprocess.py) -> ``DetectorRuntime.infer`` (model/runtime.py) ->
``_publish`` (ros/detection_msgs.py, ros/markers.py).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from aqr_perception.config import NODE_NAME
from aqr_perception.ros.dds_env import apply_loopback_dds_defaults

LOG_THROTTLE_S = 5.0
#: on shutdown, the frame in inference may take this long to finish and publish
WORKER_STOP_TIMEOUT_S = 30.0
#: how often the main loop looks for a stop signal while spinning
SPIN_PERIOD_S = 0.1


@dataclass
class FrameReport:
    """What happened to the last processed frame (feeds diagnostics)."""

    stamp_ns: int = 0
    lidar_points: int = 0
    cameras_used: list[str] = field(default_factory=list)
    cameras_masked: dict[str, str] = field(default_factory=dict)
    detections: int = 0
    has_input: bool = False
    stage_ms: dict[str, float] = field(default_factory=dict)


def one_line(text: str) -> str:
    """A multi-line error (one line per bad key) as the one line a start-up error gets."""
    head, *rest = [line.strip() for line in text.strip().splitlines() if line.strip()] or [""]
    return " ".join([head, "; ".join(rest)]) if rest else head


def _architecture(model_cfg) -> dict:
    """A ModelConfig without the choice of attention kernel (same weights, same outputs)."""
    return model_cfg.model_dump(mode="json", exclude={"attention"})


def _make_node_class():  # rclpy is imported lazily so that `--help` works without a context
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.node import Node
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
    from std_msgs.msg import Float64, Header
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    from pydantic import ValidationError

    from aqr_perception.config import ConfigError, NodeConfig, format_validation_error, load_config
    from aqr_perception.msg import DetectionVelocityArray, QueryRouting
    from aqr_perception.ros.conversions import ConversionError
    from aqr_perception.ros.debug_images import debug_views, rgb_to_imgmsg
    from aqr_perception.ros.detection_msgs import to_detection_array, to_routing_msg, to_velocity_msg
    from aqr_perception.ros.markers import detection_markers
    from aqr_perception.ros.sequence_gaps import SequenceGaps
    from aqr_perception.ros.params import declare_node_parameters, node_config_from_parameters, set_refusal
    from aqr_perception.ros.pipeline import FramePipeline

    class AqrPerceptionNode(Node):
        """See the module docstring."""

        def __init__(self, runtime=None, **kwargs) -> None:
            super().__init__(NODE_NAME, **kwargs)
            unknown = declare_node_parameters(self)
            if unknown:
                self.get_logger().warning(f"ignoring unknown parameter(s) {', '.join(unknown)}: this node has no "
                                          "such parameter (a typo? `ros2 param list` shows the names)")
            self.cfg: NodeConfig = node_config_from_parameters(self)
            cfg = self.cfg
            self.cameras = list(cfg.camera_names)
            if runtime is None:
                from aqr_perception.model.runtime import DetectorRuntime

                fallback = load_config(cfg.config_file or None).model
                runtime = DetectorRuntime(cfg.checkpoint or None, fallback, cfg.device, cfg.cpu_threads)
                if cfg.config_file and runtime.trained and _architecture(fallback) != _architecture(runtime.cfg):
                    self.get_logger().warning(
                        f"config_file {cfg.config_file} describes model {fallback.name!r}, the checkpoint holds "
                        f"{runtime.cfg.name!r} with other settings: the checkpoint's model is used "
                        "(checkpoint:=none runs the config's model with untrained weights)")
            self.runtime = runtime
            if runtime.cfg.num_views != len(self.cameras):
                raise ConfigError(f"camera_names lists {len(self.cameras)} cameras, the model expects "
                                  f"{runtime.cfg.num_views} views")
            warm_up_ms = float("nan")
            if hasattr(runtime, "warm_up"):   # the first inference is several times slower than the next
                try:
                    warm_up_ms = runtime.warm_up()
                except RuntimeError as exc:   # e.g. CUDA out of memory: frames will report it too
                    self.get_logger().error(f"model warm-up failed: {type(exc).__name__}: {exc}")
            self.class_names = list(runtime.cfg.classes)
            self.pipeline = FramePipeline(cfg, runtime)
            self.sync = self.pipeline.sync
            self.counters: dict[str, int] = defaultdict(int)
            self.report = FrameReport()
            self._throttle: dict[str, float] = {}
            self._last_problem: dict[str, str] = {}
            self._last_cloud_wall: float | None = None
            self._slow_since: float | None = None
            self._last_done_wall: float | None = None
            self._mailbox = None
            self._processing = False        # the worker holds a cloud (taken from the mailbox, not yet counted)
            # clouds the model had no time for, kept as past sweeps (multi-sweep models only)
            self._skipped_sweeps: deque = deque(maxlen=max(0, runtime.cfg.lidar.sweeps - 1))
            self._cond = threading.Condition()
            self._stop = threading.Event()

            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.qos_depth,
                             reliability=ReliabilityPolicy.RELIABLE if cfg.qos_reliability == "reliable"
                             else ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
            image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(cfg.qos_depth, cfg.sync.image_buffer_size),
                                   reliability=qos.reliability, durability=DurabilityPolicy.VOLATILE)
            static_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                    durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self._subscribe(PointCloud2, cfg.lidar_topic, self._on_cloud, qos)
            image_type = Image if cfg.image_transport == "raw" else CompressedImage
            for cam in self.cameras:
                self._subscribe(image_type, cfg.image_topic_format.format(camera=cam),
                                lambda m, c=cam: self._on_image(c, m), image_qos)
                self._subscribe(CameraInfo, cfg.camera_info_topic_format.format(camera=cam),
                                lambda m, c=cam: self._on_info(c, m), qos)
            if cfg.extrinsics_source == "tf_static":
                self._subscribe(TFMessage, "/tf_static", self._on_tf_static, static_qos)
            if self.pipeline.multi_sweep:   # the ego pose that aligns past sweeps
                tf_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                    durability=DurabilityPolicy.VOLATILE)
                self._subscribe(TFMessage, "/tf", self._on_tf, tf_qos)
            self._sweeps_without_pose_seen = 0

            out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.pub_det = self.create_publisher(Detection3DArray, "~/detections", out_qos)
            self.pub_vel = self.create_publisher(DetectionVelocityArray, "~/velocities", out_qos)
            self.pub_routing = self.create_publisher(QueryRouting, "~/routing", out_qos)
            self.pub_markers = self.create_publisher(MarkerArray, "~/markers", out_qos)
            self.pub_debug_images = {cam: self.create_publisher(Image, f"~/debug/{cam}/image", out_qos)
                                     for cam in self.cameras}
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.pub_debug = {name: self.create_publisher(Float64, f"~/debug/{name}", 10) for name in (
                "processing_time_ms", "pipeline_latency_ms", "cyclic_time_ms", "preprocess_ms", "inference_ms",
                "postprocess_ms")}
            self.add_on_set_parameters_callback(self._on_set_parameters)
            self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics)
            self._worker_thread = threading.Thread(target=self._worker, name="aqr_inference", daemon=True)
            self._worker_thread.start()
            self.get_logger().info(
                f"ready: lidar={cfg.lidar_topic} cameras={','.join(self.cameras)} ({cfg.image_transport}) "
                f"device={runtime.device} checkpoint={runtime.checkpoint or 'NONE (untrained weights)'} "
                f"(model warm-up {warm_up_ms:.0f} ms)")

        # ------------------------------------------------------------ helpers
        def _subscribe(self, msg_type, topic: str, callback, qos) -> None:
            """A subscription whose losses (transport, queue overwrite) and QoS mismatches are
            counted and logged: nothing a publisher sent disappears without a counter."""
            def lost(info) -> None:
                self.counters[f"dds_messages_lost.{topic}"] += info.total_count_change
                self._warn(f"lost:{topic}", f"{topic}: DDS reports {info.total_count} messages lost in transport so "
                                            "far (these are also in messages_missed)")

            def incompatible(info) -> None:
                self.counters[f"qos_incompatible.{topic}"] += info.total_count_change
                self._warn(f"qos:{topic}", f"{topic}: a publisher's QoS is incompatible (policy id "
                                           f"{info.last_policy_kind}); its messages are not received")

            gaps = SequenceGaps()

            def receive(msg, info) -> None:
                if missed := gaps.observe(info):
                    self.counters[f"messages_missed.{topic}"] += missed
                    self._warn(f"missed:{topic}", f"{topic}: {gaps.missed} messages never reached the node so far "
                                                  "(gaps in the publisher's sequence numbers: overwritten in a "
                                                  "queue, qos_depth / CPU load, or lost in transport)")
                callback(msg)

            events = SubscriptionEventCallbacks(message_lost=lost, incompatible_qos=incompatible)
            self.create_subscription(msg_type, topic, receive, qos, event_callbacks=events)

        def _warn(self, key: str, text: str) -> None:
            """A log line per problem key at most every LOG_THROTTLE_S seconds; the latest text
            of every key also goes to /diagnostics (``last_problem.<key>``), so a reason the
            throttle kept out of the log is still there."""
            self._last_problem[key] = text
            now = time.monotonic()
            if now - self._throttle.get(key, -1e9) >= LOG_THROTTLE_S:
                self._throttle[key] = now
                self.get_logger().warning(text)

        # ------------------------------------------------------ input callbacks
        def _on_cloud(self, msg) -> None:
            now = time.monotonic()
            self.counters["clouds_received"] += 1
            self._last_cloud_wall = now
            with self._cond:
                if self._mailbox is not None:
                    self.counters["clouds_skipped_newest_wins"] += 1
                    self._skipped_sweeps.append(self._mailbox)    # still past sweeps for the next frames
                self._mailbox = msg
                self._cond.notify()

        def _on_image(self, camera: str, msg) -> None:
            self.pipeline.on_image(camera, msg)

        def _on_info(self, camera: str, msg) -> None:
            self.counters["camera_info_received"] += 1
            try:
                self.pipeline.on_camera_info(camera, msg)
            except ConversionError as exc:
                self.counters[f"camera_info_invalid.{camera}"] += 1
                self._warn(f"info:{camera}", f"{self.cfg.camera_info_topic_format.format(camera=camera)}: {exc}")

        def _on_tf_static(self, msg) -> None:
            self._count_rejected("/tf_static", self.pipeline.on_tf_static(msg))

        def _on_tf(self, msg) -> None:
            self._count_rejected("/tf", self.pipeline.on_tf(msg))

        def _count_rejected(self, topic: str, rejected) -> None:
            """Transforms refused one by one (the rest of the message was kept): a counter per
            edge and a throttled log line naming the frames."""
            for r in rejected:
                self.counters[f"{topic.strip('/')}_rejected.{r.parent}->{r.child}"] += 1
                self._warn(f"{topic}:{r.parent}->{r.child}", f"{topic}: transform {r} (ignored; the message's "
                                                               "other transforms are used)")

        # Both entry points (the Python API and the parameter services, `ros2 param set`)
        # answer an unknown name or a wrong type in words before rclpy does.
        def set_parameters(self, parameter_list):
            return [self.set_parameters_atomically([p]) for p in parameter_list]

        def set_parameters_atomically(self, parameter_list) -> SetParametersResult:
            if (reason := set_refusal(self, list(parameter_list))) is not None:
                return SetParametersResult(successful=False, reason=reason)
            return super().set_parameters_atomically(parameter_list)

        def _on_set_parameters(self, params) -> SetParametersResult:
            # read-only parameters (all but params.RUNTIME_MUTABLE) are refused by rclpy before this
            try:
                update = {p.name: p.value for p in params}
                self.cfg = NodeConfig.model_validate({**self.cfg.model_dump(), **update})
                self.pipeline.cfg = self.cfg
            except ValidationError as exc:
                return SetParametersResult(successful=False, reason=one_line(format_validation_error(exc)))
            return SetParametersResult(successful=True)

        # --------------------------------------------------------------- worker
        def _worker(self) -> None:
            while not self._stop.is_set():
                with self._cond:
                    if self._mailbox is None:
                        self._cond.wait(timeout=0.1)
                    msg, self._mailbox = self._mailbox, None
                    self._processing = msg is not None
                    skipped = list(self._skipped_sweeps)
                    self._skipped_sweeps.clear()
                if msg is None:
                    continue
                try:
                    for old in skipped:
                        self.pipeline.remember_sweep(old)
                    self._process(msg)
                except Exception as exc:  # never let one frame kill the node
                    self.counters["frames_failed"] += 1
                    self._warn("frame_failed", f"frame skipped: {type(exc).__name__}: {exc}")
                finally:
                    self._processing = False

        def _process(self, cloud) -> None:
            cfg = self.cfg
            t0 = time.perf_counter()
            out = self.pipeline.process(cloud, live=True)
            if out.status == "invalid_cloud":
                self.counters["clouds_invalid"] += 1
                self._warn("cloud", f"{cfg.lidar_topic}: {out.message}; frame skipped")
                return
            if out.inputs is not None:
                for cam, err in out.inputs.image_errors.items():
                    self.counters[f"images_invalid.{cam}"] += 1
                    self._warn(f"img:{cam}", f"{cfg.image_topic_format.format(camera=cam)}: {err}; "
                                             "camera masked for this frame")
                for cam, warning in out.inputs.image_warnings.items():
                    self.counters[f"images_decoded_with_warnings.{cam}"] += 1
                    self._warn(f"img_warn:{cam}", f"{cfg.image_topic_format.format(camera=cam)}: {warning}; "
                                                  "image used as decoded (damaged parts grey)")
                for cam in out.inputs.masked:
                    self.counters[f"camera_masked.{cam}"] += 1
            if out.status == "model_error":
                key = "model_out_of_memory" if "out of memory" in out.message.lower() else "model_errors"
                self.counters[key] += 1
                self._warn(key, f"model failed on frame {out.stamp_ns}: {out.message}; frame skipped, "
                                "nothing published")
                return
            t2 = time.perf_counter()
            inputs = out.inputs
            self._publish(cloud.header, out.detections, inputs.arrays.lidar_valid,
                          [c for c in self.cameras if c not in inputs.masked], list(inputs.masked))
            if self.cfg.publish_debug_images:
                self._publish_debug_images(cloud.header, inputs, out.detections)
            t3 = time.perf_counter()
            stage = {**out.stage_ms, "postprocess_ms": 1e3 * (t3 - t2), "processing_time_ms": 1e3 * (t3 - t0)}
            self._record(out.stamp_ns, inputs.arrays.points, out.detections, out.has_input, inputs.masked, stage)

        def _publish(self, header, det, lidar_valid: bool, used: list[str], masked: list[str]) -> None:
            self.pub_det.publish(to_detection_array(header, det, self.class_names))
            self.pub_vel.publish(to_velocity_msg(header, det))
            self.pub_routing.publish(to_routing_msg(header, det, lidar_valid, used, masked))
            if self.cfg.publish_markers and self.pub_markers.get_subscription_count() > 0:  # RViz is watching
                names = [self.class_names[int(i)] for i in det.labels]
                self.pub_markers.publish(detection_markers(header, det.boxes, det.scores, names))
            self.counters["frames_published"] += 1

        def _publish_debug_images(self, header, inputs, det) -> None:
            watched = [c for c, pub in self.pub_debug_images.items() if pub.get_subscription_count() > 0]
            if not watched:
                return
            views = debug_views(inputs.arrays, det, self.class_names, self.cameras)
            for cam in watched:
                if cam in views:                      # masked cameras: nothing to show
                    hdr = Header(stamp=header.stamp, frame_id=self.pipeline.calib.frame_id(cam))
                    self.pub_debug_images[cam].publish(rgb_to_imgmsg(hdr, views[cam]))

        def _record(self, stamp: int, points, det, has_input: bool, masked: dict, stage: dict) -> None:
            now_wall = time.monotonic()
            if self._last_done_wall is not None:
                stage["cyclic_time_ms"] = 1e3 * (now_wall - self._last_done_wall)
            self._last_done_wall = now_wall
            stage["pipeline_latency_ms"] = (self.get_clock().now().nanoseconds - stamp) / 1e6
            for name, value in stage.items():
                self.pub_debug[name].publish(Float64(data=float(value)))
            if stage["processing_time_ms"] > self.cfg.max_processing_time_ms:
                self._slow_since = self._slow_since or now_wall
            else:
                self._slow_since = None
            if not has_input:
                self.counters["frames_without_any_input"] += 1
            self.report = FrameReport(stamp, int(points.shape[0]), [c for c in self.cameras if c not in masked],
                                      dict(masked), len(det), has_input, stage)

        # ---------------------------------------------------------- diagnostics
        def _publish_diagnostics(self) -> None:
            OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
            cfg, rep, now = self.cfg, self.report, time.monotonic()
            kv = lambda k, v: KeyValue(key=k, value=str(v))  # noqa: E731
            # inputs: every problem is listed, the level is the worst of them
            problems: list[tuple[int, str]] = []
            if self._last_cloud_wall is None:
                problems.append((ERROR, f"no PointCloud2 received on {cfg.lidar_topic}"))
            elif now - self._last_cloud_wall > 2.0:
                problems.append((ERROR, f"no PointCloud2 for {now - self._last_cloud_wall:.1f} s"))
            if rep.cameras_masked:
                problems.append((WARN, "cameras masked: " + ", ".join(
                    f"{c} ({r})" for c, r in rep.cameras_masked.items())))
            if rep.stamp_ns and rep.lidar_points == 0:
                problems.append((WARN, "LiDAR sweep empty: camera-only detection"))
            if intensity := self.pipeline.intensity.problem():
                problems.append((WARN, intensity))
            sweep_values = []
            if self.pipeline.multi_sweep:
                sc = self.pipeline.sweeps.counters
                if sc.frames_without_pose > self._sweeps_without_pose_seen:
                    problems.append((WARN, f"no /tf ego pose in {cfg.fixed_frame} for "
                                           f"{sc.frames_without_pose - self._sweeps_without_pose_seen} recent sweep(s): "
                                           "used alone (velocities unreliable)"))
                self._sweeps_without_pose_seen = sc.frames_without_pose
                sweep_values = [kv("sweeps.per_sample", self.pipeline.sweeps.sweeps),
                                kv("sweeps.frames_without_pose", sc.frames_without_pose),
                                kv("sweeps.history_resets", sc.history_resets)]
            level = max((lv for lv, _ in problems), default=OK, key=lambda b: ord(b) if isinstance(b, bytes) else b)
            text = "; ".join(t for _, t in problems) or "all inputs fresh"
            inputs = DiagnosticStatus(level=level, name=f"{self.get_name()}: inputs", message=text,
                                      hardware_id=self.get_name(), values=[
                kv("lidar_points", rep.lidar_points), kv("cameras_used", ",".join(rep.cameras_used)),
                *[kv(f"stale.{c}", r) for c, r in rep.cameras_masked.items()],
                *[kv(f"sync.images_received.{c}", n) for c, n in self.sync.counters.images_received.items()],
                *[kv(f"sync.images_unused.{c}", n) for c, n in self.sync.counters.images_evicted_unused.items()],
                kv("sync.time_jumps", self.sync.counters.time_jumps),
                *[kv(f"sync.camera_time_jumps.{c}", n) for c, n in self.sync.counters.camera_time_jumps.items() if n],
                kv("sync.clouds_out_of_order", self.sync.counters.clouds_out_of_order),
                kv("sync.clouds_waited_for_inputs", self.pipeline.input_waits.clouds_waited),
                kv("sync.input_wait_timeouts", self.pipeline.input_waits.wait_timeouts), *sweep_values])
            # processing
            ms = rep.stage_ms.get("processing_time_ms", 0.0)
            if self._slow_since is not None and (now - self._slow_since) * 1e3 > cfg.max_consecutive_delay_ms:
                level, text = ERROR, f"slower than {cfg.max_processing_time_ms:.0f} ms for {now - self._slow_since:.1f} s"
            elif ms > cfg.max_processing_time_ms:
                level, text = WARN, f"processing {ms:.0f} ms > {cfg.max_processing_time_ms:.0f} ms"
            else:
                level, text = OK, f"processing {ms:.0f} ms"
            processing = DiagnosticStatus(level=level, name=f"{self.get_name()}: processing", message=text,
                                          hardware_id=self.get_name(),
                                          values=[kv(k, f"{v:.1f}") for k, v in rep.stage_ms.items()] +
                                          [kv(k, v) for k, v in sorted(self.counters.items())] +
                                          [kv("clouds_in_progress", int(self._mailbox is not None) + int(self._processing))] +
                                          [kv(f"cloud_repairs.{k}", v) for k, v in sorted(self.pipeline.cloud_repairs.items())] +
                                          [kv(f"last_problem.{k}", v) for k, v in sorted(self._last_problem.items())])
            # model
            rt = self.runtime
            if not rt.trained:
                level, text = WARN, "no checkpoint: untrained weights, detections are meaningless"
            elif rep.stamp_ns and not rep.has_input:
                level, text = ERROR, "no modality available in the last frame: nothing detected"
            else:
                level, text = OK, f"{rt.cfg.name} on {rt.device}"
            model = DiagnosticStatus(level=level, name=f"{self.get_name()}: model", message=text,
                                     hardware_id=str(rt.device), values=[
                kv("device", rt.device), kv("cpu_threads", getattr(rt, "cpu_threads", "")),
                kv("checkpoint", rt.checkpoint or "none"), kv("model", rt.cfg.name), kv("last_detections", rep.detections)])
            arr = DiagnosticArray(status=[inputs, processing, model])
            arr.header.stamp = self.get_clock().now().to_msg()
            self.pub_diag.publish(arr)

        def stop_worker(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
            """Let the frame in progress finish (and publish), then end the worker thread."""
            if hasattr(self, "_worker_thread"):   # absent when __init__ failed part-way
                self._stop.set()
                with self._cond:
                    self._cond.notify_all()
                self._worker_thread.join(timeout=timeout_s)

        def destroy_node(self):
            self.stop_worker()
            return super().destroy_node()

    return AqrPerceptionNode


def main(argv: list[str] | None = None) -> int:
    """Run the node until Ctrl-C / SIGTERM (ROS arguments such as --ros-args are honoured).

    Start-up errors (bad parameters, a missing or broken checkpoint) are one line on
    stderr and exit code 2. A stop signal lets the frame in inference finish and publish
    before the context goes away (:mod:`aqr_perception.ros.shutdown`)."""
    dds = apply_loopback_dds_defaults()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from aqr_perception.config import ConfigError
    from aqr_perception.ros.shutdown import StopSignals

    with StopSignals() as stop:
        rclpy.init(args=sys.argv if argv is None else argv, signal_handler_options=SignalHandlerOptions.NO)
        node = None
        executor = SingleThreadedExecutor()
        try:
            node = _make_node_class()()
            node.get_logger().info(dds)
            executor.add_node(node)
            while not stop.is_set():
                executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except ConfigError as exc:
            print(f"aqr_perception_node: {one_line(str(exc))}", file=sys.stderr)
            return 2
        finally:
            if node is not None:
                node.stop_worker()
            executor.shutdown(timeout_sec=1.0)
            if node is not None:
                node.destroy_node()
            if rclpy.ok():
                rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
