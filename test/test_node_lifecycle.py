"""The node is a managed (lifecycle) node: driven from another process through the standard
lifecycle services (what `ros2 lifecycle set` calls), as a lifecycle manager does.

Active by itself with autostart (the default); a deactivated node has no inputs or
outputs and publishes nothing; reactivation works without reloading the model; cleanup
and configure load it again. With ``autostart:=false`` it waits unconfigured, and a
configure that fails leaves it running, unconfigured, with the reason in its log."""
import pytest
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from test_bad_input import NS, _cloud

from aqr_perception.ros.node_process import NodeProcess, Probe, node_topic

LIDAR = "/LIDAR_TOP"
#: cameras are never published here: the node masks them at once and detects from LiDAR alone
ARGS = ["-p", "qos_reliability:=reliable", "-p", "sync.calibration_wait_s:=0.0", "-p", "score_threshold:=0.0"]


class Lifecycle:
    """Clients of the node's lifecycle services, answered through ``probe``."""

    def __init__(self, probe: Probe, node: str = "/aqr_perception") -> None:
        self.probe = probe
        self.get = probe.node.create_client(GetState, f"{node}/get_state")
        self.change = probe.node.create_client(ChangeState, f"{node}/change_state")
        assert self.get.wait_for_service(timeout_sec=90) and self.change.wait_for_service(timeout_sec=30)

    def _call(self, client, request):
        future = client.call_async(request)
        assert self.probe.spin_until(future.done, 120), "no answer from the lifecycle service"
        return future.result()

    def state(self) -> int:
        return self._call(self.get, GetState.Request()).current_state.id

    def set(self, transition: int) -> bool:
        return self._call(self.change, ChangeState.Request(transition=Transition(id=transition))).success


@pytest.fixture
def feeder(ros_context):
    """A probe that publishes clouds and collects the node's detections: (probe, publisher, list)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from vision_msgs.msg import Detection3DArray

    with Probe("lifecycle_probe", ros_context) as probe:
        got = probe.collect(Detection3DArray, node_topic("detections"))
        pub = probe.node.create_publisher(PointCloud2, LIDAR, QoSProfile(depth=10,
                                                                         reliability=ReliabilityPolicy.RELIABLE))
        yield probe, pub, got


def _publish_cloud_and_collect(probe: Probe, pub, got: list, stamp_ns: int, expect: bool) -> None:
    """Publish one cloud once the node subscribes (if ``expect``); wait for its detections
    or, when none are expected, long enough that they would have come."""
    if expect:
        assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 30), "the node does not subscribe"
    before = len(got)
    pub.publish(_cloud(t_ns=stamp_ns))
    if expect:
        assert probe.spin_until(lambda: any(m.header.stamp.sec * NS + m.header.stamp.nanosec == stamp_ns
                                            for m in got[before:]), 60), "no detections for the cloud"
    else:
        probe.spin(3.0)
        assert len(got) == before, "a deactivated node published detections"


@pytest.mark.slow
def test_deactivate_silences_the_node_and_reactivation_keeps_the_model(feeder, tmp_path):
    probe, pub, got = feeder
    with NodeProcess(ARGS, log=tmp_path / "node.log") as node:
        node.wait_ready()
        life = Lifecycle(probe)
        assert life.state() == State.PRIMARY_STATE_ACTIVE                     # autostart
        _publish_cloud_and_collect(probe, pub, got, 1 * NS, expect=True)

        assert life.set(Transition.TRANSITION_DEACTIVATE)
        assert life.state() == State.PRIMARY_STATE_INACTIVE
        assert probe.spin_until(lambda: probe.node.count_publishers(node_topic("detections")) == 0
                                and probe.node.count_subscribers(LIDAR) == 0, 20), "inputs/outputs remain"
        _publish_cloud_and_collect(probe, pub, got, 2 * NS, expect=False)

        assert life.set(Transition.TRANSITION_ACTIVATE)
        assert life.state() == State.PRIMARY_STATE_ACTIVE
        assert probe.wait_for_publishers([node_topic("detections")], 20)
        _publish_cloud_and_collect(probe, pub, got, 3 * NS, expect=True)
        log = node.output()
        assert log.count("configured: model") == 1 and log.count("ready:") == 2, log[-3000:]

        # cleanup releases the model, configure loads it again
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):
            assert life.set(transition)
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert life.set(transition)
        assert probe.wait_for_publishers([node_topic("detections")], 20)
        _publish_cloud_and_collect(probe, pub, got, 4 * NS, expect=True)
        assert node.output().count("configured: model") == 2
        assert node.stop() == 0, node.output()[-3000:]
    assert "Traceback" not in node.output()


@pytest.mark.slow
def test_without_autostart_the_node_waits_unconfigured_until_told(feeder, tmp_path):
    probe, pub, got = feeder
    with NodeProcess([*ARGS, "-p", "autostart:=false"], log=tmp_path / "node.log") as node:
        life = Lifecycle(probe)
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED
        probe.spin(1.0)
        assert probe.node.count_publishers(node_topic("detections")) == 0 and "ready:" not in node.output()
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert life.set(transition)
        assert life.state() == State.PRIMARY_STATE_ACTIVE
        assert probe.wait_for_publishers([node_topic("detections")], 20)
        _publish_cloud_and_collect(probe, pub, got, 1 * NS, expect=True)
        assert node.stop() == 0, node.output()[-3000:]


@pytest.mark.slow
def test_a_failed_configure_leaves_the_node_unconfigured_with_the_reason(ros_context, tmp_path):
    missing = tmp_path / "no_such_model.pt"
    with Probe("lifecycle_probe", ros_context) as probe:
        with NodeProcess([*ARGS, "-p", "autostart:=false", "-p", f"checkpoint:={missing}"],
                         log=tmp_path / "node.log") as node:
            life = Lifecycle(probe)
            assert not life.set(Transition.TRANSITION_CONFIGURE)            # the checkpoint is missing
            assert life.state() == State.PRIMARY_STATE_UNCONFIGURED and node.running()
            errors = [line for line in node.output().splitlines() if "configure failed" in line]
            assert len(errors) == 1 and str(missing) in errors[0] and "no such file" in errors[0], node.output()
            assert node.stop() == 0, node.output()[-3000:]


def test_a_destroyed_node_leaves_no_lifecycle_service_behind(ros_context):
    """rclpy's LifecycleNode keeps its lifecycle services until the node object is
    garbage-collected, so after destroy_node other processes would still see a change_state /
    get_state server that no one answers (a lifecycle manager's request then waits forever:
    seen as this file's tests timing out after test_node_params' in-process nodes). The
    node's destroy_node removes them; the node object is kept alive here on purpose."""
    import rclpy
    from rclpy.context import Context

    from aqr_perception.ros.node import AqrPerceptionNode

    node = AqrPerceptionNode(context=ros_context, cli_args=["--ros-args", "-r", "__node:=destroyed_lifecycle"])
    other = Context()
    rclpy.init(context=other)
    try:
        with Probe("lifecycle_watcher", other) as probe:
            clients = [probe.node.create_client(srv, f"/destroyed_lifecycle/{name}")
                       for srv, name in ((GetState, "get_state"), (ChangeState, "change_state"))]
            assert all(c.wait_for_service(timeout_sec=30) for c in clients)
            node.destroy_node()
            assert probe.spin_until(lambda: not any(c.service_is_ready() for c in clients), 20), \
                "the destroyed node's lifecycle services are still served"
            assert node is not None                       # not collected before this point
    finally:
        rclpy.shutdown(context=other)
