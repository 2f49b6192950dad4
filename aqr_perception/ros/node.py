"""The aqr_perception ROS 2 node (executable ``aqr_perception_node``), a managed node.

PointCloud2 + 6 x (Image | CompressedImage) + CameraInfo + /tf_static in;
vision_msgs/Detection3DArray, DetectionVelocityArray, QueryRouting, MarkerArray,
/diagnostics, debug timings and (optional) per-camera debug images out.

Lifecycle (REP 2002 managed node; ``ros2 lifecycle set /aqr_perception <transition>``):

* ``configure``: declares and validates the parameters, loads and warms up the model;
* ``activate``: creates the subscriptions, publishers, diagnostics timer and the
  inference worker; the node is then "ready";
* ``deactivate`` / ``cleanup`` / ``shutdown``: the reverse (the model stays loaded from
  ``deactivate`` to the next ``activate``).

With the ``autostart`` parameter (default true) the process drives itself to active, so
``ros2 run`` and ``ros2 launch`` give a running node.

Threads: the executor thread only stores messages (images into the sync buffers, the
newest cloud into a one-slot mailbox); a worker thread turns each cloud into a frame.
When the model is slower than the LiDAR, the newest cloud wins and the replaced ones are
counted.

Path of a frame: ``_on_cloud`` -> ``_worker`` -> ``_process`` ->
``FramePipeline.process`` (frames/pipeline.py: conversions, sync, calibration,
preprocess, ``DetectorRuntime.infer``) -> ``_publish`` (data/detection_cdr.py,
ros/markers.py).
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import defaultdict, deque
from dataclasses import dataclass, field

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from pydantic import ValidationError
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64, Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from aqr_perception.allocator import keep_freed_memory
from aqr_perception.config import (
    NODE_NAME,
    PROCESS_PARAMETERS,
    ConfigError,
    NodeConfig,
    format_validation_error,
    load_config,
    one_line,
    read_param_file,
)
from aqr_perception.data.detection_cdr import detection_array_cdr, routing_cdr, velocity_cdr
from aqr_perception.detections import FrameDetections
from aqr_perception.frames.cdr import (
    CameraInfoView,
    parse_camera_info,
    parse_compressed_image,
    parse_image,
    parse_pointcloud2,
    parse_tf_message,
)
from aqr_perception.frames.conversions import ConversionError
from aqr_perception.frames.pipeline import FrameInputs, FramePipeline
from aqr_perception.msg import DetectionVelocityArray, QueryRouting
from aqr_perception.ros.counted_subscription import counted_subscription, take_pending
from aqr_perception.ros.dds_env import apply_loopback_dds_defaults
from aqr_perception.ros.debug_images import debug_views, rgb_to_imgmsg
from aqr_perception.ros.diagnostics import NodeDiagnostics
from aqr_perception.ros.markers import detection_markers, detection_markers_cdr, marker_cdr_matches
from aqr_perception.ros.msg_types import message_type_name, ros_type_name
from aqr_perception.ros.params import declare_node_parameters, node_config_from_parameters, set_refusal
from aqr_perception.stop_signals import StopSignals

LOG_THROTTLE_S = 5.0
#: under use_sim_time, this long after activation (steady time) the node checks that something
#: publishes /clock (a bag played without --clock leaves its clock at 0)
SIM_CLOCK_WAIT_S = 5.0
#: what the rmw layers put before a ROS topic name to make the DDS topic name
ROS_TOPIC_PREFIX = "rt"
#: on deactivate / shutdown, the frame in inference may take this long to finish and publish
WORKER_STOP_TIMEOUT_S = 30.0
#: while waiting for that frame, the input samples are taken this often (the executor is held)
STOP_TAKE_PERIOD_S = 0.02
#: how often the main loop looks for a stop signal while spinning
SPIN_PERIOD_S = 0.1
#: the node's debug timing topics, ``~/debug/<name>``
DEBUG_TIMINGS = ("processing_time_ms", "pipeline_latency_ms", "cyclic_time_ms", "input_wait_ms", "preprocess_ms",
                 "inference_ms", "postprocess_ms")
SUCCESS, FAILURE, ERROR = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE, \
    TransitionCallbackReturn.ERROR


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


def _architecture(model_cfg) -> dict:
    """A ModelConfig without the choice of attention kernel (same weights, same outputs)."""
    return model_cfg.model_dump(mode="json", exclude={"attention"})


class AqrPerceptionNode(LifecycleNode):
    """See the module docstring. ``runtime`` replaces the model (tests: a stub runtime)."""

    def __init__(self, runtime=None, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.declare_parameter("autostart", True, ParameterDescriptor(
            description=PROCESS_PARAMETERS["autostart"], read_only=True))
        self._given_runtime = runtime
        self.cfg: NodeConfig | None = None
        self.runtime = None
        self.pipeline: FramePipeline | None = None
        self.cameras: list[str] = []
        self.class_names: list[str] = []
        self.model_loads = 0
        #: the last configure's error, one line (start_node raises it as a ConfigError)
        self.configure_error: str | None = None
        self._report_configure_errors = True
        self._declared = False
        # counters and problem texts live as long as the node: a reactivation keeps them
        self.counters: dict[str, int] = defaultdict(int)
        self.report = FrameReport()
        self.last_problem: dict[str, str] = {}
        self.last_cloud_wall: float | None = None
        self.slow_since: float | None = None
        self._throttle: dict[str, float] = {}
        self._unrectified_said: set[str] = set()   # a state, not an event: logged once while it lasts
        self._last_done_wall: float | None = None
        # what activate creates and deactivate removes
        self._io: list = []
        #: input topic -> why nothing can arrive on it: its publishers send another type (diagnostics)
        self.type_mismatches: dict[str, str] = {}
        self._worker_thread: threading.Thread | None = None
        self._mailbox: PointCloud2 | None = None
        self._processing = False        # the worker holds a cloud (taken from the mailbox, not yet counted)
        self._skipped_sweeps: deque[PointCloud2] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._diagnostics: NodeDiagnostics | None = None    # made at configure, from its pipeline's counters
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except ConfigError as exc:
            self.configure_error = one_line(str(exc))
            if self._report_configure_errors:
                self.get_logger().error(f"configure failed: {self.configure_error}")
            return FAILURE
        except Exception as exc:  # noqa: BLE001 - rclpy would swallow the traceback
            # e.g. device:=cuda:5 on a one-GPU host (RuntimeError: invalid device ordinal)
            self.configure_error = f"{type(exc).__name__}: {exc}"
            if self._report_configure_errors:
                self.get_logger().error(f"configure failed: {traceback.format_exc()}")
            else:                               # start-up: the caller's one line; the traceback for debugging
                self.get_logger().debug(traceback.format_exc())
            return ERROR
        self.configure_error = None
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._worker_thread is not None and not self._worker_thread.is_alive():
            self._worker_thread = None          # the frame kept past the stop timeout has finished since
        if self._worker_thread is not None:     # a frame of the last activation is still in inference
            self.get_logger().error("activate refused: the frame in inference at deactivate has not finished yet "
                                    f"(after {WORKER_STOP_TIMEOUT_S:.0f} s); try again")
            return FAILURE
        self._create_io()
        self._stop.clear()
        self._worker_thread = threading.Thread(target=self._worker, name="aqr_inference", daemon=True)
        self._worker_thread.start()
        rt, cfg = self.runtime, self.cfg
        self.get_logger().info(
            f"ready: lidar={cfg.lidar_topic} cameras={','.join(self.cameras)} ({cfg.image_transport}) "
            f"device={rt.device} checkpoint={rt.checkpoint or 'NONE (untrained weights)'}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._cleanup()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._cleanup()
        return SUCCESS          # back to unconfigured: a new configure may succeed

    def _configure(self) -> None:
        if not self._declared:
            unknown = declare_node_parameters(self)
            self._declared = True
            if unknown:
                self.get_logger().warning(f"ignoring unknown parameter(s) {', '.join(unknown)}: this node has no "
                                          "such parameter (a typo? `ros2 param list` shows the names)")
        cfg = node_config_from_parameters(self)
        if cfg.keep_freed_memory and not keep_freed_memory():
            self.get_logger().warning("keep_freed_memory: this C library is not glibc, its malloc is left as it is")
        t0 = time.perf_counter()
        runtime = self._given_runtime or self._load_runtime(cfg)
        if runtime.cfg.num_views != len(cfg.camera_names):
            raise ConfigError(f"camera_names lists {len(cfg.camera_names)} cameras, the model expects "
                              f"{runtime.cfg.num_views} views")
        warm_up_ms = float("nan")
        if hasattr(runtime, "warm_up"):   # the first inference is several times slower than the next
            try:
                warm_up_ms = runtime.warm_up()
            except RuntimeError as exc:   # e.g. CUDA out of memory: frames will report it too
                self.get_logger().error(f"model warm-up failed: {type(exc).__name__}: {exc}")
        self.cfg, self.runtime = cfg, runtime
        self.cameras, self.class_names = list(cfg.camera_names), list(runtime.cfg.classes)
        self.pipeline = FramePipeline(cfg, runtime)
        self._diagnostics = NodeDiagnostics(self.pipeline.sync.counters_now())   # it remembers the pipeline's
        # clouds the model had no time for, kept as past sweeps (multi-sweep models only)
        self._skipped_sweeps = deque(maxlen=max(0, runtime.cfg.lidar.sweeps - 1))
        self.model_loads += 1
        for remark in getattr(runtime, "warnings", []):
            self.get_logger().warning(remark)
        self.get_logger().info(f"configured: model {runtime.cfg.name} on {runtime.device} "
                               f"({getattr(runtime, 'runtime', 'torch')}) "
                               f"loaded in "
                               f"{time.perf_counter() - t0:.1f} s (warm-up {warm_up_ms:.0f} ms)")

    def _load_runtime(self, cfg: NodeConfig):
        from aqr_perception.model.runtime import DetectorRuntime

        fallback = load_config(cfg.config_file or None).model
        runtime = DetectorRuntime(cfg.checkpoint or None, fallback, cfg.device, cfg.cpu_threads, cfg.runtime)
        if cfg.config_file and runtime.trained and _architecture(fallback) != _architecture(runtime.cfg):
            self.get_logger().warning(
                f"config_file {cfg.config_file} describes model {fallback.name!r}, the checkpoint holds "
                f"{runtime.cfg.name!r} with other settings: the checkpoint's model is used "
                "(checkpoint:=none runs the config's model with untrained weights)")
        return runtime

    def _create_io(self) -> None:
        cfg = self.cfg
        reliability = ReliabilityPolicy.RELIABLE if cfg.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.qos_depth, reliability=reliability,
                         durability=DurabilityPolicy.VOLATILE)
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(cfg.qos_depth, cfg.sync.image_buffer_size),
                               reliability=reliability, durability=DurabilityPolicy.VOLATILE)
        static_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        tf_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.VOLATILE)
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)

        def subscribe(msg_type: type, topic: str, callback, profile: QoSProfile, parse=None) -> None:
            self._io.append(counted_subscription(self, msg_type, topic, callback, profile, self.counters, self._warn,
                                                 parse))

        def publisher(msg_type: type, topic: str, profile: QoSProfile | int = out_qos) -> Publisher:
            pub = self.create_publisher(msg_type, topic, profile)
            self._io.append(pub)
            return pub

        # every input arrives as serialised bytes read by frames/cdr.py (clouds and images through
        # zero-copy views), so a malformed sample is counted, and said once in the throttled log
        subscribe(PointCloud2, cfg.lidar_topic, self._on_cloud, qos, parse_pointcloud2)
        image_type, parse_img = ((Image, parse_image) if cfg.image_transport == "raw" else
                                 (CompressedImage, parse_compressed_image))
        for cam in self.cameras:
            subscribe(image_type, cfg.image_topic_format.format(camera=cam),
                      lambda m, c=cam: self.pipeline.on_image(c, m), image_qos, parse_img)
            subscribe(CameraInfo, cfg.camera_info_topic_format.format(camera=cam),
                      lambda m, c=cam: self._on_info(c, m), qos, parse_camera_info)
        if cfg.extrinsics_source == "tf_static":
            subscribe(TFMessage, "/tf_static",
                      lambda m: self._count_rejected("/tf_static", self.pipeline.on_tf_static(m)), static_qos,
                      parse_tf_message)
        if self.pipeline.multi_sweep:   # the ego pose that aligns past sweeps
            subscribe(TFMessage, "/tf", lambda m: self._count_rejected("/tf", self.pipeline.on_tf(m)), tf_qos,
                      parse_tf_message)
        self.pub_det = publisher(Detection3DArray, "~/detections")
        self.pub_vel = publisher(DetectionVelocityArray, "~/velocities")
        self.pub_routing = publisher(QueryRouting, "~/routing")
        self.pub_markers = publisher(MarkerArray, "~/markers")
        self._marker_cdr = marker_cdr_matches()          # Humble's Marker has fewer fields
        self.pub_debug_images = {cam: publisher(Image, f"~/debug/{cam}/image") for cam in self.cameras}
        self.pub_diag = publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_debug = {name: publisher(Float64, f"~/debug/{name}", 10) for name in DEBUG_TIMINGS}
        self._io.append(self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics))
        if self.get_parameter("use_sim_time").value:
            self._sim_clock_check = self.create_timer(SIM_CLOCK_WAIT_S, self._check_sim_clock,
                                                      clock=Clock(clock_type=ClockType.STEADY_TIME))
            self._io.append(self._sim_clock_check)

    def _check_sim_clock(self) -> None:
        """Once, SIM_CLOCK_WAIT_S after activation under use_sim_time: nothing publishing
        /clock is said (the classic ``ros2 bag play`` without ``--clock``)."""
        self._sim_clock_check.cancel()
        if self.count_publishers("/clock") == 0 and self.get_clock().now().nanoseconds == 0:
            self._warn("sim_clock", "use_sim_time is true and nothing publishes /clock: the node's clock stands at 0, "
                                    "so /diagnostics (stamped and timed by it) is not published and "
                                    "~/debug/pipeline_latency_ms means nothing until a clock comes (play the bag with "
                                    "--clock, or set use_sim_time false)")

    def _deactivate(self) -> None:
        """Let the frame in progress finish (and publish), end the worker, remove the I/O.

        The transition holds the executor, so the samples arriving meanwhile are taken here
        (counted, and a frame waiting for its images gets them) rather than destroyed with
        the subscriptions, uncounted."""
        self.stop_worker(take_inputs=True)
        self._take_pending_inputs()
        for entity in self._io:
            if isinstance(entity, Publisher):
                self.destroy_publisher(entity)
            elif isinstance(entity, Timer):    # the diagnostics timer, the sim clock check
                self.destroy_timer(entity)
            else:
                self.destroy_subscription(entity)
        self._io = []
        with self._cond:
            if self._mailbox is not None:      # received, never processed: counted, not lost silently
                self.counters["clouds_dropped_on_deactivate"] += 1
            self._mailbox = None
            self._skipped_sweeps.clear()

    def _cleanup(self) -> None:
        self.cfg, self.runtime, self.pipeline = None, None, None

    # ------------------------------------------------------------ parameters
    # Both entry points (the Python API and the parameter services, `ros2 param set`)
    # answer an unknown name or a wrong type in words before rclpy does.
    def set_parameters(self, parameter_list: list[Parameter]) -> list[SetParametersResult]:
        return [self.set_parameters_atomically([p]) for p in parameter_list]

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        if (reason := set_refusal(self, list(parameter_list))) is not None:
            return SetParametersResult(successful=False, reason=reason)
        return super().set_parameters_atomically(parameter_list)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        # read-only parameters (all but params.RUNTIME_MUTABLE) are refused by rclpy before this
        if self.cfg is None:          # not configured: configure validates what is set now
            return SetParametersResult(successful=True)
        try:
            update = {p.name: p.value for p in params}
            self.cfg = NodeConfig.model_validate({**self.cfg.model_dump(), **update})
            self.pipeline.cfg = self.cfg
        except ValidationError as exc:
            return SetParametersResult(successful=False, reason=one_line(format_validation_error(exc)))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------ helpers
    def _warn(self, key: str, text: str) -> None:
        """A log line per problem key at most every LOG_THROTTLE_S seconds; the latest text
        of every key also goes to /diagnostics (``last_problem.<key>``), so a reason the
        throttle kept out of the log is still there."""
        self.last_problem[key] = text
        now = time.monotonic()
        if now - self._throttle.get(key, -1e9) >= LOG_THROTTLE_S:
            self._throttle[key] = now
            self.get_logger().warning(text)

    def clouds_in_progress(self) -> int:
        """Clouds received and not yet in an outcome counter: the mailbox and the frame in inference."""
        return int(self._mailbox is not None) + int(self._processing)

    # ------------------------------------------------------ input callbacks
    def _on_cloud(self, msg: PointCloud2) -> None:
        self.counters["clouds_received"] += 1
        self.last_cloud_wall = time.monotonic()
        with self._cond:
            if self._mailbox is not None:
                self.counters["clouds_skipped_newest_wins"] += 1
                self._skipped_sweeps.append(self._mailbox)    # still past sweeps for the next frames
            self._mailbox = msg
            self._cond.notify()

    def _on_info(self, camera: str, msg: CameraInfoView) -> None:
        self.counters["camera_info_received"] += 1
        try:
            self.pipeline.on_camera_info(camera, msg)
        except ConversionError as exc:
            self.counters[f"camera_info_invalid.{camera}"] += 1
            self._warn(f"info:{camera}", f"{self.cfg.camera_info_topic_format.format(camera=camera)}: {exc}")
            return
        if unrectified := self.pipeline.unrectified_camera(camera):
            if camera not in self._unrectified_said:      # the inputs status carries it while it lasts
                self._unrectified_said.add(camera)
                self._warn(f"unrectified:{camera}", unrectified)
        else:
            self._unrectified_said.discard(camera)

    def _count_rejected(self, topic: str, rejected) -> None:
        """Transforms refused one by one (the rest of the message was kept): a counter per
        edge and a throttled log line naming the frames."""
        for r in rejected:
            self.counters[f"{topic.strip('/')}_rejected.{r.parent}->{r.child}"] += 1
            self._warn(f"{topic}:{r.parent}->{r.child}", f"{topic}: transform {r} (ignored; the message's "
                                                           "other transforms are used)")

    # --------------------------------------------------------------- worker
    def _worker(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if self._mailbox is None:
                    self._cond.wait(timeout=0.1)
                if self._stop.is_set():         # a cloud taken while stopping waits, counted on deactivate
                    break
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
            except Exception as exc:  # noqa: BLE001 - never let one frame kill the node
                self.counters["frames_failed"] += 1
                self._warn("frame_failed", f"frame skipped: {type(exc).__name__}: {exc}")
            finally:
                self._processing = False

    def _process(self, cloud: PointCloud2) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        out = self.pipeline.process(cloud, live=True)
        if out.status == "invalid_cloud":
            self.counters["clouds_invalid"] += 1
            self._warn("cloud", f"{cfg.lidar_topic}: {out.message}; frame skipped")
            return
        if out.inputs is not None:
            self._count_image_problems(out.inputs)
        if out.status == "model_error":
            key = "model_out_of_memory" if "out of memory" in out.message.lower() else "model_errors"
            self.counters[key] += 1
            self._warn(key, f"model failed on frame {out.stamp_ns}: {out.message}; frame skipped, nothing published")
            return
        t2 = time.perf_counter()
        inputs = out.inputs
        self._publish(cloud.header, out.detections, inputs.arrays.lidar_valid,
                      [c for c in self.cameras if c not in inputs.masked], list(inputs.masked))
        if cfg.publish_debug_images:
            self._publish_debug_images(cloud.header, inputs, out.detections)
        t3 = time.perf_counter()
        # the node's own time: holding the cloud for inputs in transport is input_wait_ms (in
        # pipeline_latency_ms too), so a late camera does not read as a slow node
        processing_ms = 1e3 * (t3 - t0) - out.stage_ms.get("input_wait_ms", 0.0)
        stage = {**out.stage_ms, "postprocess_ms": 1e3 * (t3 - t2), "processing_time_ms": processing_ms}
        self._record(out.stamp_ns, inputs, out.detections, out.has_input, stage)

    def _count_image_problems(self, inputs: FrameInputs) -> None:
        fmt = self.cfg.image_topic_format
        for cam, err in inputs.image_errors.items():
            self.counters[f"images_invalid.{cam}"] += 1
            self._warn(f"img:{cam}", f"{fmt.format(camera=cam)}: {err}; camera masked for this frame")
        for cam, warning in inputs.image_warnings.items():
            self.counters[f"images_decoded_with_warnings.{cam}"] += 1
            self._warn(f"img_warn:{cam}", f"{fmt.format(camera=cam)}: {warning}; image used as decoded "
                                          "(damaged parts grey)")
        for cam in inputs.masked:
            self.counters[f"camera_masked.{cam}"] += 1
        if inputs.lidar_masked:
            self.counters["lidar_masked.no_intensity"] += 1
            self._warn("lidar_masked", f"{self.cfg.lidar_topic}: {inputs.lidar_masked}; camera-only frame "
                                       "(a model trained with train.drop_intensity_p uses such sweeps)")

    def _publish(self, header: Header, det: FrameDetections, lidar_valid: bool, used: list[str],
                 masked: list[str]) -> None:
        # serialised directly (detection_cdr: the same bytes as the built messages, a fraction of the time)
        self.pub_det.publish(detection_array_cdr(header, det, self.class_names))
        self.pub_vel.publish(velocity_cdr(header, det))
        self.pub_routing.publish(routing_cdr(header, det, lidar_valid, used, masked))
        if self.cfg.publish_markers and self.pub_markers.get_subscription_count() > 0:  # RViz is watching
            names = [self.class_names[int(i)] for i in det.labels]
            build = detection_markers_cdr if self._marker_cdr else detection_markers
            self.pub_markers.publish(build(header, det.boxes, det.scores, names))
        self.counters["frames_published"] += 1

    def _publish_debug_images(self, header: Header, inputs: FrameInputs, det: FrameDetections) -> None:
        watched = [c for c, pub in self.pub_debug_images.items() if pub.get_subscription_count() > 0]
        if not watched:
            return
        views = debug_views(inputs.arrays, det, self.class_names, self.cameras)
        for cam in watched:
            if cam in views:                      # masked cameras: nothing to show
                hdr = Header(stamp=header.stamp, frame_id=self.pipeline.calib.frame_id(cam))
                self.pub_debug_images[cam].publish(rgb_to_imgmsg(hdr, views[cam]))

    def _record(self, stamp: int, inputs: FrameInputs, det: FrameDetections, has_input: bool,
                stage: dict[str, float]) -> None:
        now_wall = time.monotonic()
        if self._last_done_wall is not None:
            stage["cyclic_time_ms"] = 1e3 * (now_wall - self._last_done_wall)
        self._last_done_wall = now_wall
        stage["pipeline_latency_ms"] = (self.get_clock().now().nanoseconds - stamp) / 1e6
        for name, value in stage.items():
            self.pub_debug[name].publish(Float64(data=float(value)))
        if stage["processing_time_ms"] > self.cfg.max_processing_time_ms:
            self.slow_since = self.slow_since or now_wall
        else:
            self.slow_since = None
        if not has_input:
            self.counters["frames_without_any_input"] += 1
            self._warn("no_input", f"frame {stamp}: no modality available (LiDAR empty or masked, every camera "
                                   "masked): an empty detection array published")
        masked = inputs.masked
        self.report = FrameReport(stamp, int(inputs.arrays.points.shape[0]),
                                  [c for c in self.cameras if c not in masked], dict(masked), len(det), has_input,
                                  stage)

    def _publish_diagnostics(self) -> None:
        self.type_mismatches = self._publisher_type_mismatches()
        for topic, text in self.type_mismatches.items():
            self._warn(f"type:{topic}", text)
        for key, text in self._diagnostics.update_clock_events(self):   # said before last_problem is built
            self._warn(key, text)
        self.pub_diag.publish(self._diagnostics.build(self))

    def _publisher_type_mismatches(self) -> dict[str, str]:
        """Input topics whose publishers send another message type: DDS never matches them,
        so nothing arrives and no counter can move (a camera driver sending CompressedImage to
        a node set to ``image_transport: raw``). Read from the ROS graph."""
        out = {}
        for sub in self._io:
            if not isinstance(sub, Subscription):
                continue
            ours = message_type_name(sub.msg_type)
            # sub.topic_name is already remapped: asked by its ROS name, rclpy would remap it again
            infos = self.get_publishers_info_by_topic(ROS_TOPIC_PREFIX + sub.topic_name, no_mangle=True)
            theirs = sorted({ros_type_name(info.topic_type) for info in infos} - {ours})
            if theirs:
                image = sub.msg_type in (Image, CompressedImage)
                hint = f" (image_transport: {self.cfg.image_transport})" if image else ""
                out[sub.topic_name] = (f"{sub.topic_name}: published as {', '.join(theirs)}, the node reads "
                                       f"{ours}{hint}: nothing arrives from those publishers")
        return out

    # ------------------------------------------------------------- stopping
    def stop_worker(self, timeout_s: float = WORKER_STOP_TIMEOUT_S, take_inputs: bool = False) -> None:
        """Let the frame in progress finish (and publish), then end the worker thread. A
        worker still in inference after ``timeout_s`` is kept (and named in the log): a new
        activation waits for it rather than running two workers. ``take_inputs``: meanwhile
        take the input samples, for a caller that holds the executor."""
        if self._worker_thread is not None:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            end = time.monotonic() + timeout_s
            while self._worker_thread.is_alive() and (left := end - time.monotonic()) > 0:
                if take_inputs:
                    self._take_pending_inputs()
                self._worker_thread.join(timeout=min(left, STOP_TAKE_PERIOD_S if take_inputs else left))
            if self._worker_thread.is_alive():
                self.get_logger().error(f"the frame in inference did not finish within {timeout_s:.0f} s")
                return
            self._worker_thread = None

    def _take_pending_inputs(self) -> None:
        for entity in self._io:
            if isinstance(entity, Subscription):
                take_pending(entity)

    def destroy_node(self) -> None:
        """Stop the worker and destroy the node, its lifecycle services included: rclpy's
        LifecycleNode leaves them to its state machine, which lives until the node object is
        garbage-collected, and until then other processes still see a ``change_state`` /
        ``get_state`` server that no one answers (a request sent to it waits forever)."""
        self.stop_worker()
        super().destroy_node()
        self._state_machine.destroy_when_not_in_use()


def start_node(node: AqrPerceptionNode) -> None:
    """Drive ``node`` from unconfigured to active, as ``autostart`` does; a failed configure
    is a ConfigError with its one-line reason."""
    node._report_configure_errors = False      # the caller reports it (main: one line, exit 2)
    try:
        result = node.trigger_configure()
    finally:
        node._report_configure_errors = True
    if result != SUCCESS:
        raise ConfigError(node.configure_error or f"configure returned {result}")
    if node.trigger_activate() != SUCCESS:
        raise RuntimeError("the node did not activate")


def init_ros(args: list[str]) -> None:
    """``rclpy.init(args)`` with what it refuses as a ConfigError. The ``--params-file``
    files are checked first (rcl's own refusal is a traceback), and the process's stderr is
    held back meanwhile: where rcl refuses an argument it logs "Failed to parse global
    arguments" itself before raising, and the start-up error is to be one line (main's). On
    success what was held back is written."""
    import os
    import tempfile

    for path in params_files(args):
        read_param_file(path)
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        except _rclpy.UnknownROSArgsError as exc:
            raise ConfigError(f"unknown ROS arguments {exc}") from None
        except _rclpy.RCLError as exc:               # any other argument rcl refuses
            raise ConfigError(str(exc)) from None
        finally:                         # refused: rcl's own line is dropped with the file
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        sys.stderr.buffer.write(held.read())
        sys.stderr.flush()


def params_files(argv: list[str]) -> list[str]:
    """The ``--params-file`` paths among the ``--ros-args`` of ``argv``."""
    files, in_ros = [], False
    for i, arg in enumerate(argv):
        if arg == "--ros-args":
            in_ros = True
        elif arg == "--":
            in_ros = False
        elif in_ros and arg == "--params-file" and i + 1 < len(argv):
            files.append(argv[i + 1])
    return files


def main(argv: list[str] | None = None) -> int:
    """Run the node until Ctrl-C / SIGTERM (ROS arguments such as --ros-args are honoured).

    Start-up errors (bad parameters, a missing or broken checkpoint) are one line on
    stderr and exit code 2. A stop signal lets the frame in inference finish and publish
    before the context goes away (:mod:`aqr_perception.stop_signals`)."""
    dds = apply_loopback_dds_defaults()
    with StopSignals() as stop:
        try:
            init_ros(sys.argv if argv is None else argv)
        except ConfigError as exc:
            print(f"aqr_perception_node: {one_line(str(exc))}", file=sys.stderr)
            return 2
        node = None
        executor = SingleThreadedExecutor()
        try:
            node = AqrPerceptionNode()
            if node.get_parameter("autostart").value:
                start_node(node)        # a start-up error is the only line on stderr
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
