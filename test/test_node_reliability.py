"""The node under bad input and shutdown: it keeps running, counts and reports every
problem on /diagnostics, publishes nothing from corrupt data, and exits cleanly."""
import contextlib
import signal
import time

import numpy as np
import pytest
from test_bad_input import NS, H, StubRuntime, W, _cloud, _compressed_msg, _image, _info, _tf_static, damaged_jpeg

from aqr_perception.config import load_config
from aqr_perception.data.rig import nuscenes_like_rig
from aqr_perception.ros.node_process import node_topic


class NodeRuntime(StubRuntime):
    cfg = load_config("tiny").model
    device = "cpu"
    checkpoint = "stub.pt"
    trained = True


@contextlib.contextmanager
def running_node(ros_context, runtime, args, probe_name):
    """The node, driven to active, spinning on its own executor thread (as in its process),
    and a probe (:class:`~aqr_perception.ros.node_process.Probe`): (node, probe node,
    probe executor); both torn down afterwards."""
    import threading

    from rclpy.executors import SingleThreadedExecutor

    from aqr_perception.ros.node import AqrPerceptionNode, start_node
    from aqr_perception.ros.node_process import Probe

    node = AqrPerceptionNode(runtime=runtime, context=ros_context, cli_args=args)
    start_node(node)
    node_ex = SingleThreadedExecutor(context=ros_context)
    node_ex.add_node(node)
    spinner = threading.Thread(target=node_ex.spin, daemon=True)
    spinner.start()
    try:
        with Probe(probe_name, ros_context) as probe:
            yield node, probe.node, probe.executor
    finally:
        node_ex.shutdown()
        spinner.join(timeout=5)
        node.destroy_node()


@pytest.fixture
def node_env(ros_context):
    cams = nuscenes_like_rig(W, H)
    args = ["--ros-args", "-p", "image_transport:=raw", "-p", "image_topic_format:=/{camera}/image_raw",
            "-p", "qos_reliability:=reliable", "-p", "sync.calibration_wait_s:=0.0", "-p", "diagnostics_period_s:=0.2",
            "-p", "extrinsics_source:=tf_static"]
    with running_node(ros_context, NodeRuntime(), args, "probe") as (node, probe, ex):
        yield node, probe, ex, cams


def _spin_until(ex, condition, timeout):
    """Spin until ``condition()`` holds or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not condition():
        ex.spin_once(timeout_sec=0.02)


def _spin(ex, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ex.spin_once(timeout_sec=0.02)


def _rig_publishers(probe, cams, image_type=None, image_topic: str = "/{camera}/image_raw"):
    """A driver rig's publishers on ``probe`` (reliable, as the node's ``qos_reliability``
    here): (cloud, {camera: image}, {camera: CameraInfo}, latched /tf_static)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from tf2_msgs.msg import TFMessage

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    images = {c.name: probe.create_publisher(image_type or Image, image_topic.format(camera=c.name), qos)
              for c in cams}
    infos = {c.name: probe.create_publisher(CameraInfo, f"/{c.name}/camera_info", qos) for c in cams}
    static = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return (probe.create_publisher(PointCloud2, "/LIDAR_TOP", qos), images, infos,
            probe.create_publisher(TFMessage, "/tf_static", static))


def test_bad_messages_are_counted_reported_and_never_published(node_env):
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection3DArray

    node, probe, ex, cams = node_env
    pub_cloud, pub_img, pub_info, pub_tf = _rig_publishers(probe, cams)
    dets, diags = [], []
    probe.create_subscription(Detection3DArray, node_topic("detections"), dets.append, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    _spin(ex, 1.0)                                              # discovery
    pub_tf.publish(_tf_static(cams))
    bad_info = _info(cams[0].name, cams[0].K)
    bad_info.k = [0.0] * 9
    pub_info[cams[0].name].publish(bad_info)                    # invalid intrinsics
    for c in cams[1:]:
        pub_info[c.name].publish(_info(c.name, c.K))
        msg = _image(c.name, NS)
        if c is cams[1]:
            msg.encoding = "32FC1"                              # unsupported encoding (a depth image)
        pub_img[c.name].publish(msg)
    broken = _cloud()
    broken.fields = [f for f in broken.fields if f.name != "z"]
    pub_cloud.publish(broken)                                   # corrupt cloud: no detection
    _spin_until(ex, lambda: node.counters["clouds_invalid"] and node.counters[f"camera_info_invalid.{cams[0].name}"],
                10.0)
    _spin(ex, 0.3)
    assert dets == []
    assert node.counters["clouds_invalid"] == 1
    assert node.counters[f"camera_info_invalid.{cams[0].name}"] == 1
    pub_cloud.publish(_cloud(t_ns=NS))                          # a good cloud: processed, cameras masked
    _spin_until(ex, lambda: len(dets) >= 1, 10.0)
    _spin(ex, 0.5)                                              # fresh diagnostics after that frame
    assert len(dets) == 1 and dets[0].header.stamp.sec == 1
    assert node.counters[f"images_invalid.{cams[1].name}"] == 1
    statuses = {s.name.split(": ")[-1]: s for d in diags[-3:] for s in d.status}
    inputs = statuses["inputs"]
    assert inputs.level != b"\x00" and cams[1].name in inputs.message and "unsupported image encoding" in inputs.message
    counters = {kv.key: kv.value for kv in statuses["processing"].values}
    assert counters["clouds_invalid"] == "1" and counters[f"images_invalid.{cams[1].name}"] == "1"
    # every cloud received ends in one outcome counter (README): here one invalid, one published
    assert counters["clouds_received"] == "2" and counters["frames_published"] == "1"
    assert counters["clouds_in_progress"] == "0"
    stale = {kv.key: kv.value for kv in inputs.values if kv.key.startswith("stale.")}
    assert set(stale) == {f"stale.{cams[0].name}", f"stale.{cams[1].name}"}
    assert stale[f"stale.{cams[0].name}"].startswith("CameraInfo refused: ")   # the reason, not "none came"
    # the reason of each counter stays in the diagnostics, whatever the log throttle let through
    assert "no 'z' field" in counters["last_problem.cloud"]
    assert "unsupported image encoding" in counters[f"last_problem.img:{cams[1].name}"]


def test_bytes_that_do_not_parse_are_counted_by_topic_and_the_node_goes_on(node_env, capfd):
    """The node reads every input from raw subscriptions (clouds and images through
    zero-copy views, CameraInfo and TF read from the bytes the same way): a sample that is not
    a well-formed message is counted and reported with the field it breaks at, and the next good one is
    processed (here the good TF and CameraInfo after the bad ones give the frame its camera).
    Nothing but the node's own throttled lines reaches stderr (rclpy's deserialisation of a
    sequence longer than the bytes printed a line of its own per sample)."""
    import struct

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    node, probe, ex, cams = node_env
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub_cloud = probe.create_publisher(PointCloud2, "/LIDAR_TOP", qos)
    pub_img = probe.create_publisher(Image, f"/{cams[0].name}/image_raw", qos)
    pub_info = probe.create_publisher(CameraInfo, f"/{cams[0].name}/camera_info", qos)
    static = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub_tf = probe.create_publisher(TFMessage, "/tf_static", static)
    dets, diags = [], []
    probe.create_subscription(Detection3DArray, node_topic("detections"), dets.append, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    _spin(ex, 1.0)
    # typed messages too: a typed subscription's rmw would drop these before any callback, uncounted
    tf_bytes = serialize_message(_tf_static(cams))
    pub_tf.publish(tf_bytes[:4] + struct.pack("<I", 0xFFFFFFF0) + tf_bytes[8:])   # 4 billion transforms
    _spin_until(ex, lambda: node.counters["messages_malformed./tf_static"], 10.0)
    pub_tf.publish(tf_bytes[:-8])                               # the last transform cut short
    info_bytes = serialize_message(_info(cams[0].name, cams[0].K))
    pub_info.publish(info_bytes[:40])                           # cut inside distortion_model
    _spin_until(ex, lambda: node.counters["messages_malformed./tf_static"] == 2
                and node.counters[f"messages_malformed./{cams[0].name}/camera_info"], 10.0)
    pub_tf.publish(tf_bytes)
    pub_info.publish(info_bytes)
    good = serialize_message(_cloud(t_ns=NS))
    pub_cloud.publish(good[: len(good) // 2])                   # truncated in the point data
    image = serialize_message(_image(cams[0].name, NS))
    pub_img.publish(b"\x07\x07\x00\x00" + image[4:])          # not a CDR encapsulation
    _spin_until(ex, lambda: node.counters["messages_malformed./LIDAR_TOP"]
                and node.counters[f"messages_malformed./{cams[0].name}/image_raw"], 10.0)
    assert node.counters["messages_malformed./LIDAR_TOP"] == 1
    assert node.counters[f"messages_malformed./{cams[0].name}/image_raw"] == 1
    assert node.counters["messages_malformed./tf_static"] == 2
    assert node.counters[f"messages_malformed./{cams[0].name}/camera_info"] == 1
    assert node.counters["clouds_received"] == 0 and dets == []
    pub_cloud.publish(good)
    _spin_until(ex, lambda: len(dets) >= 1, 10.0)
    _spin(ex, 0.5)
    assert len(dets) == 1
    statuses = {s.name.split(": ")[-1]: s for d in diags[-3:] for s in d.status}
    counters = {kv.key: kv.value for kv in statuses["processing"].values}
    assert counters["messages_malformed./LIDAR_TOP"] == "1"
    assert "truncated at data" in counters["last_problem.malformed:/LIDAR_TOP"]
    assert "unknown CDR encapsulation" in counters[f"last_problem.malformed:/{cams[0].name}/image_raw"]
    assert counters["messages_malformed./tf_static"] == "2"
    assert "TFMessage: truncated at transforms[5].transform" in counters["last_problem.malformed:/tf_static"]
    assert "CameraInfo: truncated at distortion_model" in \
        counters[f"last_problem.malformed:/{cams[0].name}/camera_info"]
    assert "sequence size exceeds" not in capfd.readouterr().err


def test_a_damaged_jpeg_is_counted_and_its_warning_reported(ros_context):
    """libjpeg's recoverable errors, which OpenCV only prints to stderr, reach a counter
    and /diagnostics; the image is still used (the frame goes out with all six cameras)."""
    import cv2
    import numpy as np
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage

    from aqr_perception.msg import QueryRouting

    cams = nuscenes_like_rig(W, H)
    args = ["--ros-args", "-p", "image_transport:=compressed", "-p", "qos_reliability:=reliable",
            "-p", "sync.calibration_wait_s:=0.0", "-p", "diagnostics_period_s:=0.2"]
    with running_node(ros_context, NodeRuntime(), args, "jpeg_probe") as (node, probe, ex):
        pub_cloud, pub_img, pub_info, pub_tf = _rig_publishers(probe, cams, CompressedImage,
                                                               "/{camera}/image_rect_compressed")
        routing, diags = [], []
        probe.create_subscription(QueryRouting, node_topic("routing"), routing.append, 10)
        probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        _spin(ex, 1.0)
        pub_tf.publish(_tf_static(cams))
        good = cv2.imencode(".jpg", np.full((H, W, 3), 90, np.uint8))[1].tobytes()
        for c in cams:
            pub_info[c.name].publish(_info(c.name, c.K))
            pub_img[c.name].publish(_compressed_msg(damaged_jpeg() if c is cams[4] else good, cam=c.name))
        _spin(ex, 0.5)
        pub_cloud.publish(_cloud(t_ns=NS))
        _spin_until(ex, lambda: routing, 10.0)
        _spin(ex, 0.5)
        assert routing and list(routing[0].cameras_masked) == []
        key = f"images_decoded_with_warnings.{cams[4].name}"
        assert node.counters[key] == 1 and sum(k.startswith("images_decoded_with") for k in node.counters) == 1
        values = {kv.key: kv.value for d in diags[-2:] for s in d.status for kv in s.values}
        assert values[key] == "1"
        assert "Corrupt JPEG data" in values[f"last_problem.img_warn:{cams[4].name}"]


def test_a_publisher_with_incompatible_qos_is_counted_and_reported(node_env):
    """A best-effort LiDAR driver cannot feed a reliable subscription: DDS never delivers
    its clouds, so the node must say so instead of staying silent."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    node, probe, ex, _ = node_env
    best_effort = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    pub = probe.create_publisher(PointCloud2, "/LIDAR_TOP", best_effort)
    _spin_until(ex, lambda: node.counters["qos_incompatible./LIDAR_TOP"] > 0, 10.0)
    pub.publish(_cloud())
    _spin(ex, 0.3)
    assert node.counters["qos_incompatible./LIDAR_TOP"] == 1 and node.counters["clouds_received"] == 0


@pytest.mark.parametrize("swapped", [False, True], ids=["plain", "two_cameras_swapped_by_remapping"])
def test_a_publisher_of_another_message_type_is_named_on_diagnostics(ros_context, swapped):
    """A camera driver sending CompressedImage to a node set to ``image_transport: raw``: DDS
    never matches the two, so no counter can move. The node reads the ROS graph and says
    which topic, which types, and which parameter (before: only "no image yet"). With two
    cameras' topics swapped by ``-r`` remapping, the topic named is the one the node really
    reads (asked by its ROS name, the graph query would have remapped it a second time)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from sensor_msgs.msg import CompressedImage, Image

    cams = nuscenes_like_rig(W, H)
    first, second = (f"/{c.name}/image_raw" for c in cams[:2])
    args = ["--ros-args", "-p", "image_transport:=raw", "-p", "image_topic_format:=/{camera}/image_raw",
            "-p", "diagnostics_period_s:=0.2"]
    if swapped:
        args += ["-r", f"{first}:={second}", "-r", f"{second}:={first}"]
    wrong = second if swapped else first           # where the first camera's subscription reads
    diags = []
    driver_ctx = Context()                  # another participant, as the driver's process is
    rclpy.init(context=driver_ctx)          # (one participant refuses two types on a topic)
    with running_node(ros_context, NodeRuntime(), args, "type_probe") as (node, probe, ex):
        try:
            probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
            driver = rclpy.create_node("jpeg_driver", context=driver_ctx)
            pub = driver.create_publisher(CompressedImage, wrong, 10)
            right = driver.create_publisher(Image, first if swapped else second, 10)

            def named() -> bool:
                return any("published as sensor_msgs/msg/CompressedImage" in s.message
                           for d in diags[-2:] for s in d.status if s.name.endswith(": inputs"))
            _spin_until(ex, named, 10.0)
            _spin(ex, 0.5)                          # the Image publisher is in the graph too by now
            inputs = [s for s in diags[-1].status if s.name.endswith(": inputs")][0]
            assert f"{wrong}: published as sensor_msgs/msg/CompressedImage, the node reads sensor_msgs/msg/Image " \
                   "(image_transport: raw)" in inputs.message
            assert inputs.level >= b"\x01" and list(node.type_mismatches) == [wrong]
            assert "published as" in node.last_problem[f"type:{wrong}"]
            driver.destroy_publisher(pub)                        # gone from the graph: the warning goes too
            _spin_until(ex, lambda: not named(), 10.0)
            assert not named() and node.type_mismatches == {}
            driver.destroy_publisher(right)
            driver.destroy_node()
        finally:
            rclpy.shutdown(context=driver_ctx)


@pytest.mark.slow
def test_sigterm_exits_cleanly_within_two_seconds_and_restart_works(tmp_path):
    from aqr_perception.ros.node_process import NodeProcess

    for attempt in range(2):                                    # start, stop, start again
        with NodeProcess(log=tmp_path / f"node{attempt}.log") as node:
            node.wait_ready(60)
            t0 = time.monotonic()
            node.interrupt(signal.SIGTERM)
            rc = node.wait(timeout_s=10)
            elapsed = time.monotonic() - t0
        assert rc == 0 and elapsed < 2.0, f"attempt {attempt}: rc {rc} after {elapsed:.2f} s\n{node.output()}"


class SlowRuntime(NodeRuntime):
    """A model that takes 100 ms per frame (the LiDAR below comes every 50 ms)."""

    def infer(self, arrays):
        time.sleep(0.1)
        return super().infer(arrays)


@pytest.mark.slow
def test_overload_newest_frame_wins_latency_bounded_and_counted(ros_context):
    """LiDAR at 2x the rate the model can follow: every cloud is either published or
    counted as skipped, and the published frames are the newest (bounded latency)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from vision_msgs.msg import Detection3DArray

    args = ["--ros-args", "-p", "qos_reliability:=reliable", "-p", "qos_depth:=50",
            "-p", "sync.calibration_wait_s:=0.0"]
    with running_node(ros_context, SlowRuntime(), args, "overload_probe") as (node, probe, ex):
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        pub = probe.create_publisher(PointCloud2, "/LIDAR_TOP", qos)
        received = []
        probe.create_subscription(
            Detection3DArray, node_topic("detections"),
            lambda m: received.append((time.monotonic(), m.header.stamp.sec * NS + m.header.stamp.nanosec)), qos)
        _spin(ex, 1.0)
        sent = {}
        n = 60
        t0 = time.monotonic()
        for i in range(n):                                      # 20 Hz for 3 s
            stamp = (i + 1) * 50_000_000
            sent[stamp] = time.monotonic()
            pub.publish(_cloud(n=50, t_ns=stamp))
            _spin(ex, max(0.0, t0 + (i + 1) * 0.05 - time.monotonic()))
        c = node.counters
        deadline = time.monotonic() + 10                        # let the frames in flight finish
        while time.monotonic() < deadline and c["frames_published"] + c["clouds_skipped_newest_wins"] < n:
            _spin(ex, 0.1)
        _spin(ex, 0.5)
        assert c["clouds_received"] == n
        # every cloud is accounted for: published or replaced by a newer one before processing
        assert c["frames_published"] + c["clouds_skipped_newest_wins"] == n, dict(c)
        assert c["clouds_skipped_newest_wins"] >= n // 3          # the model cannot follow 20 Hz
        assert len(received) == c["frames_published"]
        # newest wins: latency stays bounded instead of growing with the backlog (without it the
        # last output would come ~3 s after its cloud: 60 frames x 0.1 s - 3 s of sending)
        lat = [arrive - sent[stamp] for arrive, stamp in received]
        third = max(1, len(lat) // 3)
        assert max(lat) < 1.5, f"latency grew: {[round(x, 2) for x in lat]}"
        assert sum(lat[-third:]) / third < sum(lat[:third]) / third + 0.5, f"latency trend: {lat}"
        assert [s for _, s in received] == sorted(s for _, s in received)


class GatedRuntime(NodeRuntime):
    """A model whose inference lasts until the test releases it: a lifecycle transition lands
    while a frame is in inference, whatever the machine's speed."""

    def __init__(self):
        import threading

        super().__init__()
        self.release = threading.Event()

    def infer(self, arrays):
        assert self.release.wait(timeout=60.0), "the test never released the frame"
        return super().infer(arrays)


def _request_transition(probe, transition: int):
    """A lifecycle transition through the node's service, as ``ros2 lifecycle set`` sends it;
    returns the future of the answer."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    client = probe.create_client(ChangeState, "/aqr_perception/change_state")
    assert client.wait_for_service(timeout_sec=10)
    return client.call_async(ChangeState.Request(transition=Transition(id=transition)))


def _change_state(probe, ex, transition: int) -> bool:
    future = _request_transition(probe, transition)
    _spin_until(ex, future.done, 30.0)
    return future.done() and future.result().success


def test_samples_arriving_while_a_deactivate_waits_for_the_frame_are_counted(ros_context, monkeypatch):
    """``deactivate`` holds the node's executor while the frame in inference finishes. The
    clouds and images published meanwhile are still taken and counted (received, then
    replaced or dropped on deactivate: no new frame is started), so a cloud topic's samples
    sent = clouds_received + messages_missed + messages_malformed holds across the
    transition. Before, they were destroyed in the readers with the subscriptions, in no
    counter. A frame kept past the stop timeout does not block a later activate once it has
    finished."""
    import functools

    from lifecycle_msgs.msg import Transition

    cams = nuscenes_like_rig(W, H)
    args = ["--ros-args", "-p", "image_transport:=raw", "-p", "image_topic_format:=/{camera}/image_raw",
            "-p", "qos_reliability:=reliable", "-p", "sync.calibration_wait_s:=0.0",
            "-p", "extrinsics_source:=tf_static"]
    runtime = GatedRuntime()
    with running_node(ros_context, runtime, args, "deactivate_probe") as (node, probe, ex):
        pub_cloud, pub_img, pub_info, pub_tf = _rig_publishers(probe, cams)
        _spin(ex, 1.0)
        pub_tf.publish(_tf_static(cams))
        for c in cams:
            pub_info[c.name].publish(_info(c.name, c.K))
        _spin(ex, 0.3)
        pub_cloud.publish(_cloud(t_ns=NS))
        _spin_until(ex, lambda: node._processing, 10.0)
        assert node._processing
        future = _request_transition(probe, Transition.TRANSITION_DEACTIVATE)
        _spin_until(ex, node._stop.is_set, 10.0)            # the transition now waits for the frame
        assert node._stop.is_set()
        for k in range(2, 6):                               # LiDAR and cameras go on meanwhile
            pub_cloud.publish(_cloud(t_ns=k * NS))
            for c in cams:
                pub_img[c.name].publish(_image(c.name, k * NS))
            _spin(ex, 0.1)
        images = node.pipeline.sync.counters.images_received
        _spin_until(ex, lambda: node.counters["clouds_received"] == 5 and sum(images.values()) == 24, 10.0)
        runtime.release.set()
        _spin_until(ex, future.done, 10.0)
        assert future.done() and future.result().success
        c = node.counters
        clouds_counted = c["clouds_received"] + c["messages_missed./LIDAR_TOP"] + c["messages_malformed./LIDAR_TOP"]
        assert clouds_counted == 5, dict(c)
        assert c["frames_published"] == 1 and c["clouds_dropped_on_deactivate"] == 1, dict(c)   # no new frame
        assert c["clouds_received"] == (c["frames_published"] + c["clouds_skipped_newest_wins"]
                                        + c["clouds_dropped_on_deactivate"]), dict(c)
        for cam in cams:
            assert images[cam.name] + c[f"messages_missed./{cam.name}/image_raw"] == 4, (cam.name, dict(c))

        # a frame still in inference past the stop timeout is kept; once done, activate works again
        runtime.release.clear()
        assert _change_state(probe, ex, Transition.TRANSITION_ACTIVATE)
        _spin_until(ex, lambda: pub_cloud.get_subscription_count() > 0, 10.0)
        pub_cloud.publish(_cloud(t_ns=6 * NS))
        _spin_until(ex, lambda: node._processing, 10.0)
        assert node._processing
        monkeypatch.setattr(node, "stop_worker", functools.partial(type(node).stop_worker, node, timeout_s=0.1))
        assert _change_state(probe, ex, Transition.TRANSITION_DEACTIVATE)
        assert node._worker_thread is not None and node._worker_thread.is_alive()   # kept: still in inference
        runtime.release.set()
        _spin_until(ex, lambda: not node._worker_thread.is_alive(), 10.0)
        assert _change_state(probe, ex, Transition.TRANSITION_ACTIVATE)


def test_a_cloud_taken_once_stopping_has_begun_starts_no_new_frame(node_env):
    """While a deactivate stops the worker it takes the samples waiting in the readers; a
    cloud among them stays in the mailbox (counted as dropped on deactivate) instead of
    waking an idle worker into a whole new frame that the transition would wait for."""
    from lifecycle_msgs.msg import Transition
    from rclpy.serialization import serialize_message

    from aqr_perception.frames.cdr import parse_pointcloud2

    node, probe, ex, _ = node_env
    _spin(ex, 0.3)
    assert not node._processing and node._mailbox is None          # the worker idles
    node._stop.set()                                               # what stop_worker does first
    node._on_cloud(parse_pointcloud2(serialize_message(_cloud(t_ns=NS))))   # as take_pending hands it over
    _spin(ex, 0.5)
    assert node.counters["frames_published"] == 0 and node._mailbox is not None
    assert _change_state(probe, ex, Transition.TRANSITION_DEACTIVATE)
    assert node.counters["clouds_dropped_on_deactivate"] == 1 and node.counters["frames_published"] == 0


class NoInputRuntime(NodeRuntime):
    """What the model answers when every modality is masked: no input, no detections."""

    def infer(self, arrays):
        from aqr_perception.detections import FrameDetections
        from aqr_perception.model.runtime import Prediction

        self.calls.append(arrays)
        empty = FrameDetections(np.zeros((0, 9)), np.zeros(0), np.zeros(0, int), np.zeros(0, int),
                                np.zeros((0, 1)), np.zeros((0, 1)))
        return Prediction(empty, False, 1.0)


def test_a_frame_with_no_modality_is_an_empty_result_counted_and_said(ros_context):
    """No camera calibrated and a cloud the model cannot use: an empty Detection3DArray goes
    out (a normal result), counted as frames_without_any_input with a line in the log and
    its reason on /diagnostics (before: counted, but said nowhere but the model status)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from vision_msgs.msg import Detection3DArray

    args = ["--ros-args", "-p", "qos_reliability:=reliable", "-p", "sync.calibration_wait_s:=0.0",
            "-p", "diagnostics_period_s:=0.2"]
    with running_node(ros_context, NoInputRuntime(), args, "no_input_probe") as (node, probe, ex):
        pub = probe.create_publisher(PointCloud2, "/LIDAR_TOP", QoSProfile(depth=10,
                                                                           reliability=ReliabilityPolicy.RELIABLE))
        dets, diags = [], []
        probe.create_subscription(Detection3DArray, node_topic("detections"), dets.append, 10)
        probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        _spin(ex, 1.0)
        pub.publish(_cloud(t_ns=NS))
        _spin_until(ex, lambda: dets and len(diags) > 2, 10.0)
        _spin(ex, 0.5)
        assert len(dets) == 1 and len(dets[0].detections) == 0
        assert node.counters["frames_without_any_input"] == 1
        statuses = {s.name.split(": ")[-1]: s for s in diags[-1].status}
        counters = {kv.key: kv.value for kv in statuses["processing"].values}
        assert counters["frames_without_any_input"] == "1"
        assert "no modality available" in counters["last_problem.no_input"]
        assert statuses["model"].level == b"\x02"


def test_cameras_without_an_ego_pose_fall_back_to_static_extrinsics_counted_on_diagnostics(ros_context):
    """A multi-sweep model that places each camera at its own ego pose (CMT's nuScenes
    reading) with no /tf: the frame goes out with the static extrinsics, and the fallbacks
    are on /diagnostics (before: counted in the pipeline, published nowhere)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection3DArray

    class EgoMotionRuntime(NodeRuntime):
        cfg = load_config("tiny", overrides=["model.lidar.sweeps=3", "model.image.camera_ego_motion=true"]).model

    cams = nuscenes_like_rig(W, H)                 # one of them sends: the others are masked
    args = ["--ros-args", "-p", "image_transport:=raw", "-p", "image_topic_format:=/{camera}/image_raw",
            "-p", "qos_reliability:=reliable",
            "-p", "sync.calibration_wait_s:=0.0", "-p", "diagnostics_period_s:=0.2",
            "-p", "extrinsics_source:=tf_static"]
    with running_node(ros_context, EgoMotionRuntime(), args, "ego_probe") as (node, probe, ex):
        pub_cloud, pub_img, pub_info, pub_tf = _rig_publishers(probe, cams[:1])
        dets, diags = [], []
        probe.create_subscription(Detection3DArray, node_topic("detections"), dets.append, 10)
        probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        _spin(ex, 1.0)
        pub_tf.publish(_tf_static(cams))
        pub_info[cams[0].name].publish(_info(cams[0].name, cams[0].K))
        pub_img[cams[0].name].publish(_image(cams[0].name, NS))
        _spin(ex, 0.3)
        pub_cloud.publish(_cloud(t_ns=NS))
        _spin_until(ex, lambda: dets, 10.0)
        _spin(ex, 0.5)
        assert len(dets) == 1
        inputs = [s for s in diags[-1].status if s.name.endswith(": inputs")][0]
        values = {kv.key: kv.value for kv in inputs.values}
        assert values["cameras_used"] == cams[0].name
        assert values["ego_motion_fallbacks"] == "1" == str(node.pipeline.ego_motion_fallbacks)


def test_stamps_that_go_back_or_come_out_of_order_are_said_per_source_again_after_a_reconfigure(node_env):
    """A camera whose stamps jump back (its driver restarted), a cloud that jumps back (a
    looping bag) and an image older than the camera's newest: each is said once, in the log
    (``last_problem.*``) and as a WARN on the inputs status of that diagnostics period, with
    the sync counters beside it (before: counted in the sync, said nowhere, and
    images_used / images_out_of_order / stale frames not published). After a reconfigure the
    counters start again from 0, and so does what the diagnostics remember of them."""
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from vision_msgs.msg import Detection3DArray

    node, probe, ex, cams = node_env
    cam = cams[0].name
    pub_cloud, pub_img, pub_info, pub_tf = _rig_publishers(probe, cams[:1])
    dets, diags = [], []
    probe.create_subscription(Detection3DArray, node_topic("detections"), dets.append, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)

    def counters():
        return node.pipeline.sync.counters            # the pipeline of the current configure

    def statuses_after_now() -> dict:
        """The statuses of a DiagnosticArray built a whole period after this call (two
        arrive after it: the first may have been built before)."""
        k = len(diags)
        _spin_until(ex, lambda: len(diags) > k + 2, 10.0)
        return {s.name.split(": ")[-1]: s for s in diags[-1].status}

    def image(t_s: float):
        n = counters().images_received[cam]
        pub_img[cam].publish(_image(cam, int(t_s * NS)))
        _spin_until(ex, lambda: counters().images_received[cam] > n, 10.0)

    def frame(t_s: float):
        image(t_s)
        n = len(dets)
        pub_cloud.publish(_cloud(t_ns=int(t_s * NS)))
        _spin_until(ex, lambda: len(dets) > n, 10.0)

    def drive_with_a_restart() -> tuple[list, dict]:
        """Two frames, the camera and the LiDAR restarting in between, and a late image: the
        DiagnosticArrays since, and the statuses of one built a period after them."""
        start = len(diags)
        _spin_until(ex, lambda: pub_cloud.get_subscription_count() > 0, 10.0)
        pub_tf.publish(_tf_static(cams))
        pub_info[cam].publish(_info(cam, cams[0].K))
        _spin(ex, 0.3)
        frame(10.0)
        statuses_after_now()
        n = len(diags)
        quiet = " | ".join(s.message for d in diags[start:n] for s in d.status)
        assert "went back" not in quiet and "not newer" not in quiet
        frame(2.0)                                          # the camera, then the LiDAR, restart at 2 s
        image(1.95)                                         # and an image older than the camera's newest
        last = statuses_after_now()
        return diags[n:], last

    def inputs_said(arrays) -> str:
        return " | ".join(s.message for d in arrays for s in d.status if s.name.endswith(": inputs"))

    since, last = drive_with_a_restart()
    said = inputs_said(since)
    assert f"/{cam}/image_raw: image stamps went back by more than 1 s (1x in the last diagnostics period" in said
    assert "/LIDAR_TOP: cloud stamps went back by more than 1 s (1x" in said
    assert f"/{cam}/image_raw: 1 image(s) in the last diagnostics period not newer than the newest one" in said
    values = {kv.key: kv.value for kv in last["inputs"].values}
    assert values[f"sync.camera_time_jumps.{cam}"] == "1" and values["sync.time_jumps"] == "1"
    assert values[f"sync.images_used.{cam}"] == "2" and values[f"sync.images_out_of_order.{cam}"] == "1"
    assert values[f"sync.frames_stale.{cams[1].name}"] == "2"         # never sent: stale in both frames
    (warned,) = [d for d in since if "image stamps went back" in inputs_said([d])]
    problems = {kv.key: kv.value for s in warned.status if s.name.endswith(": processing") for kv in s.values}
    assert "image stamps went back" in problems[f"last_problem.clock:{cam}"]    # in the same array as the WARN
    problems = {kv.key: kv.value for kv in last["processing"].values}
    assert "cloud stamps went back" in problems["last_problem.clock:lidar"]
    assert "not newer" in problems[f"last_problem.order:{cam}"]
    later = last["inputs"].message                                    # said in its period only
    assert "went back" not in later and "not newer" not in later

    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                       Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert _change_state(probe, ex, transition)
    since, _ = drive_with_a_restart()
    assert f"/{cam}/image_raw: image stamps went back by more than 1 s (1x" in inputs_said(since)
    assert "/LIDAR_TOP: cloud stamps went back" in inputs_said(since)


class ScriptedRuntime(NodeRuntime):
    """A model that fails as told, frame by frame (an exception to raise, a Prediction to
    answer instead, or None: answers), and sleeps ``delay_s`` per frame."""

    def __init__(self, script, delay_s: float = 0.0):
        super().__init__()
        self.script, self.delay_s = list(script), delay_s

    def infer(self, arrays):
        time.sleep(self.delay_s)
        failure = self.script.pop(0) if self.script else None
        if isinstance(failure, Exception):
            raise failure
        return failure if failure is not None else super().infer(arrays)


def _statuses(diags) -> dict:
    return {s.name.split(": ")[-1]: s for s in diags[-1].status}


def test_model_failures_sweeps_with_bad_intensity_and_a_silent_lidar_are_counted_and_said(ros_context):
    """What the README promises for a model that fails (a CUDA out-of-memory: the cache
    released; any other model error; an answer the node cannot publish: frames_failed), for
    a sweep a model needing intensity cannot use and for one with non-finite intensities
    (repaired), seen from outside: the node's counters on /diagnostics, nothing published
    from the failed frames, the node going on; and the LiDAR's silence, before the first
    cloud and for longer than ``lidar_timeout_s``, an ERROR on the inputs status."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from test_bad_input import _cloud_with_intensity
    from vision_msgs.msg import Detection3DArray

    from aqr_perception.detections import FrameDetections
    from aqr_perception.model.runtime import ModelOutputError, Prediction

    n = 2                                                   # boxes of 5 numbers: publishing them fails
    broken = Prediction(FrameDetections(np.zeros((n, 5)), np.full(n, 0.9), np.zeros(n, int), np.arange(n),
                                        np.full((n, 1), 0.7), np.full((n, 1), 0.6)), True, 1.0)
    runtime = ScriptedRuntime([RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                               ModelOutputError("the model's outputs are not finite"), broken, None, None])
    args = ["--ros-args", "-p", "qos_reliability:=reliable", "-p", "sync.calibration_wait_s:=0.0",
            "-p", "diagnostics_period_s:=0.2", "-p", "lidar_timeout_s:=0.6"]
    with running_node(ros_context, runtime, args, "failures_probe") as (node, probe, ex):
        pub = probe.create_publisher(PointCloud2, "/LIDAR_TOP", QoSProfile(depth=10,
                                                                           reliability=ReliabilityPolicy.RELIABLE))
        dets, diags = [], []
        probe.create_subscription(Detection3DArray, node_topic("detections"), dets.append, 10)
        probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        _spin_until(ex, lambda: diags and pub.get_subscription_count() > 0, 10.0)
        inputs = _statuses(diags)["inputs"]
        assert inputs.level == b"\x02" and "no PointCloud2 received on /LIDAR_TOP" in inputs.message
        outcomes = lambda: sum(node.counters[key] for key in (  # noqa: E731
            "frames_published", "model_errors", "model_out_of_memory", "frames_failed"))
        intensity = np.random.default_rng(0).uniform(0, 59, 200).astype(np.float32)
        intensity[[3, 50, 199]] = [np.nan, np.inf, -np.inf]               # repaired to 0, points kept
        for k, cloud in enumerate([_cloud(t_ns=NS), _cloud(t_ns=2 * NS), _cloud(t_ns=3 * NS), _cloud(t_ns=4 * NS),
                                   _cloud_with_intensity(None, t_ns=5 * NS),
                                   _cloud_with_intensity(intensity, t_ns=6 * NS)]):
            pub.publish(cloud)
            _spin_until(ex, lambda k=k: outcomes() > k, 10.0)
        n = len(diags)
        _spin_until(ex, lambda: len(diags) > n + 1, 10.0)
        assert len(dets) == 3 and runtime.released == 1
        statuses = _statuses(diags)
        values = {kv.key: kv.value for kv in statuses["processing"].values}
        assert (values["model_out_of_memory"], values["model_errors"], values["frames_failed"],
                values["frames_published"], values["lidar_masked.no_intensity"],
                values["clouds_received"]) == ("1", "1", "1", "3", "1", "6"), values
        assert values["last_problem.frame_failed"].startswith("frame skipped: IndexError"), values
        assert values["cloud_repairs.intensity_non_finite"] == "3"
        assert "CUDA out of memory" in values["last_problem.model_out_of_memory"]
        assert "nothing published" in values["last_problem.model_errors"]
        assert "camera-only frame" in values["last_problem.lidar_masked"]
        assert "without an intensity field" in statuses["inputs"].message
        _spin_until(ex, lambda: "no PointCloud2 for" in _statuses(diags)["inputs"].message, 10.0)
        inputs = _statuses(diags)["inputs"]                 # silent for longer than lidar_timeout_s
        assert inputs.level == b"\x02" and "no PointCloud2 for" in inputs.message, inputs.message


def test_a_slow_model_is_warn_then_error_on_the_processing_status_and_ok_again_when_fast(ros_context):
    """``max_processing_time_ms`` and ``max_consecutive_delay_ms`` as documented: one frame
    slower than the first is a WARN naming both times, slowness lasting longer than the
    second an ERROR, and a fast frame brings the status back to OK."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    runtime = ScriptedRuntime([], delay_s=0.3)
    args = ["--ros-args", "-p", "qos_reliability:=reliable", "-p", "sync.calibration_wait_s:=0.0",
            "-p", "diagnostics_period_s:=0.1", "-p", "max_processing_time_ms:=150.0",
            "-p", "max_consecutive_delay_ms:=500.0"]
    with running_node(ros_context, runtime, args, "slow_probe") as (node, probe, ex):
        pub = probe.create_publisher(PointCloud2, "/LIDAR_TOP", QoSProfile(depth=10,
                                                                           reliability=ReliabilityPolicy.RELIABLE))
        diags = []
        probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        _spin_until(ex, lambda: diags and pub.get_subscription_count() > 0, 10.0)
        for k in range(1, 9):                                # 8 slow frames, ~2.4 s of slowness
            pub.publish(_cloud(t_ns=k * NS))
            _spin_until(ex, lambda k=k: node.counters["frames_published"] >= k, 10.0)
        seen = [s for d in diags for s in d.status if s.name.endswith(": processing")]
        assert any(s.level == b"\x01" and "> 150 ms" in s.message for s in seen), [s.message for s in seen]
        assert any(s.level == b"\x02" and "slower than 150 ms for" in s.message for s in seen), \
            [s.message for s in seen]
        runtime.delay_s = 0.0
        pub.publish(_cloud(t_ns=10 * NS))
        _spin_until(ex, lambda: node.counters["frames_published"] >= 9, 10.0)
        n = len(diags)
        _spin_until(ex, lambda: len(diags) > n + 1, 10.0)
        processing = _statuses(diags)["processing"]
        assert processing.level == b"\x00" and processing.message.startswith("processing "), processing.message


def test_refused_transforms_are_counted_by_edge_on_diagnostics_and_the_rest_is_used(node_env):
    """A degenerate edge in /tf_static (robot_state_publisher's one message) and in /tf: each
    counted under its own name (``tf_static_rejected.<parent>-><child>``,
    ``tf_rejected.<parent>-><child>``) with the reason kept, while the cameras' transforms of
    the same message calibrate the cameras."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from test_bad_input import _transform
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    node, probe, ex, cams = node_env
    pub_cloud, pub_img, pub_info, pub_static = _rig_publishers(probe, cams)
    pub_tf = probe.create_publisher(TFMessage, "/tf", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    dets, diags = [], []
    probe.create_subscription(Detection3DArray, node_topic("detections"), dets.append, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    _spin_until(ex, lambda: pub_tf.get_subscription_count() > 0, 10.0)
    pub_static.publish(TFMessage(transforms=[_transform("lidar", "base_link"),
                                             _transform("base_link", "gps", q=(0.0, 0.0, 0.0, 0.0)),
                                             *_tf_static(cams).transforms]))
    pub_tf.publish(TFMessage(transforms=[_transform("map", "wheel", q=(float("nan"), 0.0, 0.0, 1.0), stamp_ns=NS),
                                         _transform("map", "lidar", stamp_ns=NS)]))
    for c in cams:
        pub_info[c.name].publish(_info(c.name, c.K))
        pub_img[c.name].publish(_image(c.name, NS))
    _spin(ex, 0.3)
    pub_cloud.publish(_cloud(t_ns=NS))
    _spin_until(ex, lambda: dets, 10.0)
    n = len(diags)
    _spin_until(ex, lambda: len(diags) > n + 1, 10.0)
    statuses = _statuses(diags)
    values = {kv.key: kv.value for kv in statuses["processing"].values}
    assert values["tf_static_rejected.base_link->gps"] == "1" and values["tf_rejected.map->wheel"] == "1", values
    assert not any(k.startswith(("tf_static_rejected.lidar", "tf_rejected.map->lidar")) for k in values)
    assert "base_link -> gps" in values["last_problem./tf_static:base_link->gps"]
    assert "map -> wheel" in values["last_problem./tf:map->wheel"]
    inputs = {kv.key: kv.value for kv in statuses["inputs"].values}
    assert inputs["cameras_used"] == ",".join(c.name for c in cams)


def test_output_parameters_set_at_runtime_apply_from_the_next_frame(ros_context):
    """What ``ros2 param set`` changes while the node runs, seen on its outputs (before,
    only the stored value was tested): ``max_detections`` and ``score_threshold`` cut the
    next frame's detections, ``publish_markers: false`` stops the markers though RViz
    subscribes, ``publish_debug_images: true`` starts the debug image of the camera that
    sends. Beside them: CameraInfo on a ``camera_info_topic_format`` of the user's, the
    ``~/debug/*_ms`` timings, the model status's values and the camera counters."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Float64
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    cams = nuscenes_like_rig(W, H)
    cam = cams[0].name
    args = ["--ros-args", "-p", "image_transport:=raw", "-p", "image_topic_format:=/{camera}/image_raw",
            "-p", "camera_info_topic_format:=/{camera}/intrinsics", "-p", "qos_reliability:=reliable",
            "-p", "sync.calibration_wait_s:=0.0", "-p", "diagnostics_period_s:=0.2",
            "-p", "extrinsics_source:=tf_static"]
    with running_node(ros_context, NodeRuntime(), args, "param_effect_probe") as (node, probe, ex):
        pub_cloud, pub_img, _, pub_tf = _rig_publishers(probe, cams[:1])
        pub_info = probe.create_publisher(CameraInfo, f"/{cam}/intrinsics",
                                          QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        got: dict[str, list] = {"dets": [], "markers": [], "debug": [], "timing": [], "diags": []}
        for key, msg_type, topic in (("dets", Detection3DArray, node_topic("detections")),
                                     ("markers", MarkerArray, node_topic("markers")),
                                     ("debug", Image, node_topic(f"debug/{cam}/image")),
                                     ("timing", Float64, node_topic("debug/processing_time_ms")),
                                     ("diags", DiagnosticArray, "/diagnostics")):
            probe.create_subscription(msg_type, topic, got[key].append, 10)
        client = AsyncParameterClient(probe, "/aqr_perception")
        assert client.wait_for_services(timeout_sec=10)

        def set_params(**values):
            future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
            ex.spin_until_future_complete(future, timeout_sec=10)
            assert all(r.successful for r in future.result().results), future.result()

        def frame(k: int) -> Detection3DArray:
            received = node.pipeline.sync.counters.images_received
            pub_img[cam].publish(_image(cam, k * NS))
            _spin_until(ex, lambda: received[cam] >= k, 10.0)
            pub_cloud.publish(_cloud(t_ns=k * NS))
            _spin_until(ex, lambda: len(got["dets"]) >= k, 10.0)
            _spin(ex, 0.3)
            return got["dets"][-1]

        _spin_until(ex, lambda: pub_cloud.get_subscription_count() > 0, 10.0)
        pub_tf.publish(_tf_static(cams))
        pub_info.publish(_info(cam, cams[0].K))
        _spin(ex, 0.3)
        assert len(frame(1).detections) == 2                  # scores 0.9, 0.5 of 0.9, 0.5, 0.1 >= 0.3
        assert len(got["markers"]) == 1 and got["debug"] == [] and len(got["timing"]) == 1
        assert got["timing"][0].data > 0.0
        set_params(max_detections=1, publish_markers=False, publish_debug_images=True)
        assert len(frame(2).detections) == 1
        assert len(got["markers"]) == 1 and len(got["debug"]) == 1
        assert got["debug"][0].header.frame_id == cam and got["debug"][0].encoding == "rgb8"
        set_params(max_detections=200, score_threshold=0.05)
        assert len(frame(3).detections) == 3
        n = len(got["diags"])
        _spin_until(ex, lambda: len(got["diags"]) > n + 1, 10.0)
        statuses = _statuses(got["diags"])
        model = {kv.key: kv.value for kv in statuses["model"].values}
        assert (model["runtime"], model["last_detections"], model["checkpoint"]) == ("torch", "3", "stub.pt")
        counters = {kv.key: kv.value for kv in statuses["processing"].values}
        assert counters["camera_info_received"] == "1"
        assert counters[f"camera_masked.{cams[1].name}"] == "3" and f"camera_masked.{cam}" not in counters
        assert {kv.key: kv.value for kv in statuses["inputs"].values}["cameras_used"] == cam


def test_clock_events_before_the_first_diagnostics_period_are_said_in_it(ros_context):
    """Stamps that jump back before the first /diagnostics of an activation are in that
    first array (its baseline is the configured pipeline's counters, all 0; before, the
    first period had no baseline and said nothing)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection3DArray

    cams = nuscenes_like_rig(W, H)
    cam = cams[0].name
    args = ["--ros-args", "-p", "image_transport:=raw", "-p", "image_topic_format:=/{camera}/image_raw",
            "-p", "qos_reliability:=reliable", "-p", "sync.calibration_wait_s:=0.0",
            "-p", "diagnostics_period_s:=6.0", "-p", "extrinsics_source:=tf_static"]
    with running_node(ros_context, NodeRuntime(), args, "first_period_probe") as (node, probe, ex):
        pub_cloud, pub_img, _, _ = _rig_publishers(probe, cams[:1])
        dets, diags = [], []
        probe.create_subscription(Detection3DArray, node_topic("detections"), dets.append, 10)
        probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        _spin_until(ex, lambda: pub_cloud.get_subscription_count() > 0 and pub_img[cam].get_subscription_count(),
                    10.0)
        received = node.pipeline.sync.counters.images_received
        for k, t in enumerate((10 * NS, 2 * NS)):           # the camera and the LiDAR go back 8 s
            pub_img[cam].publish(_image(cam, t))
            _spin_until(ex, lambda k=k: received[cam] > k, 10.0)
            pub_cloud.publish(_cloud(t_ns=t))
            _spin_until(ex, lambda k=k: len(dets) > k, 10.0)
        assert diags == [], "the first period ended before the test could drive it (a very slow host)"
        _spin_until(ex, lambda: diags, 15.0)
        inputs = next(s for s in diags[0].status if s.name.endswith(": inputs"))
        assert f"/{cam}/image_raw: image stamps went back" in inputs.message, inputs.message
        assert "/LIDAR_TOP: cloud stamps went back" in inputs.message


def test_distorted_camera_info_on_a_topic_that_is_not_rectified_is_a_warning(node_env):
    """A raw camera's ``image_raw`` with a CameraInfo stating plumb_bob distortion: the node
    projects as for rectified images, so it says so on the inputs status (and logs it once)
    while it lasts; a CameraInfo without distortion clears it. The other cameras (D = 0) are
    not named."""
    from diagnostic_msgs.msg import DiagnosticArray

    node, probe, ex, cams = node_env
    _, _, pub_info, _ = _rig_publishers(probe, cams)
    diags = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    _spin(ex, 1.0)                                              # discovery
    distorted = _info(cams[0].name, cams[0].K)
    distorted.distortion_model, distorted.d = "plumb_bob", [-0.31, 0.12, 0.0, 0.0, -0.02]
    for c in cams[1:]:
        pub_info[c.name].publish(_info(c.name, c.K))
    pub_info[cams[0].name].publish(distorted)
    _spin_until(ex, lambda: node.counters["camera_info_received"] >= len(cams), 10.0)
    n = len(diags)
    _spin_until(ex, lambda: len(diags) > n, 5.0)
    inputs = _statuses(diags)["inputs"]
    said = (f"/{cams[0].name}/image_raw: its CameraInfo states plumb_bob (largest |D| 0.31) distortion and the "
            "topic is no image_rect one")
    assert inputs.level != b"\x00" and said in inputs.message, inputs.message     # (and no cloud: an ERROR)
    assert not any(f"/{c.name}/image_raw" in inputs.message for c in cams[1:])
    assert said in node.last_problem[f"unrectified:{cams[0].name}"]
    pub_info[cams[0].name].publish(_info(cams[0].name, cams[0].K))
    _spin_until(ex, lambda: node.counters["camera_info_received"] >= len(cams) + 1, 10.0)
    n = len(diags)
    _spin_until(ex, lambda: len(diags) > n, 5.0)
    assert "distortion" not in _statuses(diags)["inputs"].message


@pytest.mark.parametrize("clock", [False, True], ids=["no_clock", "clock"])
def test_use_sim_time_without_a_clock_publisher_is_said(ros_context, monkeypatch, clock):
    """use_sim_time with nothing publishing /clock (a bag played without --clock): the
    node's clock stands at 0, its /diagnostics timer never fires, and the node says why
    once; with a /clock publisher there, nothing is said."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rosgraph_msgs.msg import Clock

    import aqr_perception.ros.node as node_mod

    monkeypatch.setattr(node_mod, "SIM_CLOCK_WAIT_S", 1.0)     # the /clock publisher comes after activation
    args = ["--ros-args", "-p", "use_sim_time:=true", "-p", "diagnostics_period_s:=0.1"]
    with running_node(ros_context, NodeRuntime(), args, "sim_clock_probe") as (node, probe, ex):
        diags = []
        probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        if clock:
            probe.create_publisher(Clock, "/clock", 10)
        _spin(ex, 2.0)
        said = node.last_problem.get("sim_clock", "")
        if clock:
            assert said == ""
        else:
            assert "use_sim_time is true and nothing publishes /clock" in said and "--clock" in said
            assert diags == []                              # what the line explains
