"""The shipped RViz2 configs against the running graph: every display's topic, resolved the
way RViz2 subscribes (image_transport rules included), is published by the node or the
player with the display's message type and a compatible QoS; the fixed frames are in the
TF tree the player sends; and the player's ground-truth markers are the bag's ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from aqr_perception.data.typestore import project_typestore

ROOT = Path(__file__).resolve().parent.parent
BAG = ROOT / "aqr_perception" / "resources" / "default_drive"
CONFIGS = sorted((ROOT / "rviz").glob("*.rviz"))
#: RViz2's Image display takes the transport from the topic's last name when it is one of
#: these, and subscribes to <base>/<transport> with the plugin's type; any other name is a raw
#: Image topic (rviz_default_plugins get_transport_from_topic.cpp: getTransportFromTopic /
#: getBaseTopicFromTopic; Jazzy hard-codes these three, later releases read the installed
#: image_transport plugins, which adds zstd). There is no transport property in Jazzy's display.
TRANSPORTS = {"compressed": "sensor_msgs/msg/CompressedImage", "compressedDepth": "sensor_msgs/msg/CompressedImage",
              "theora": "theora_image_transport/msg/Packet"}
DISPLAY_TYPES = {"rviz_default_plugins/PointCloud2": "sensor_msgs/msg/PointCloud2",
                 "rviz_default_plugins/MarkerArray": "visualization_msgs/msg/MarkerArray",
                 "rviz_default_plugins/Image": "sensor_msgs/msg/Image"}
#: the display keys RViz2's Image display has (no "Transport Hint": that was RViz 1)
IMAGE_KEYS = {"Class", "Name", "Enabled", "Topic", "Normalize Range", "Min Value", "Max Value", "Median window"}


def subscribed(display: dict) -> list[tuple[str, str]]:
    """(topic, message type) RViz2 subscribes to for one display."""
    cls = display["Class"]
    if cls == "rviz_default_plugins/TF":
        return [("/tf", "tf2_msgs/msg/TFMessage"), ("/tf_static", "tf2_msgs/msg/TFMessage")]
    if cls == "rviz_default_plugins/Grid":
        return []
    topic = display["Topic"]["Value"]
    if cls == "rviz_default_plugins/Image":
        last = topic.rsplit("/", 1)[-1]
        if last in TRANSPORTS:
            return [(topic, TRANSPORTS[last])]       # <base>/<transport>: the name as written
        return [(topic, "sensor_msgs/msg/Image")]
    return [(topic, DISPLAY_TYPES[cls])]


def _displays(path: Path) -> tuple[dict, list[dict]]:
    manager = yaml.safe_load(path.read_text())["Visualization Manager"]
    return manager, manager["Displays"]


def test_the_configs_parse_and_use_rviz2_keys():
    assert [p.name for p in CONFIGS] == ["aqr_perception.rviz", "aqr_perception_map.rviz"]
    for path in CONFIGS:
        manager, displays = _displays(path)
        assert {d["Class"] for d in displays} <= set(DISPLAY_TYPES) | {"rviz_default_plugins/TF",
                                                                       "rviz_default_plugins/Grid"}
        for d in displays:
            if d["Class"] == "rviz_default_plugins/Image":
                assert set(d) <= IMAGE_KEYS, set(d) - IMAGE_KEYS
    assert _displays(CONFIGS[1])[0]["Global Options"]["Fixed Frame"] == "map"
    # the resolution rule itself, on the names of image_transport's documentation
    img = {"Class": "rviz_default_plugins/Image"}
    assert subscribed({**img, "Topic": {"Value": "/cam/image_raw/compressed"}}) == [
        ("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage")]
    assert subscribed({**img, "Topic": {"Value": "/CAM_FRONT/image_rect_compressed"}}) == [
        ("/CAM_FRONT/image_rect_compressed", "sensor_msgs/msg/Image")]     # what the old config got wrong


def _gt_boxes() -> dict[int, tuple[np.ndarray, list[str]]]:
    """The bag's ground truth decoded by rosbags: stamp -> (centres (N, 3), heights (N,), names)."""
    store, out = project_typestore(), {}
    with Reader(BAG) as reader:
        conns = [c for c in reader.connections if c.topic == "/gt/detections"]
        for conn, _, raw in reader.messages(connections=conns):
            msg = store.deserialize_cdr(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            centres = np.array([[d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.center.position.z]
                                for d in msg.detections]).reshape(-1, 3)
            out[stamp] = (centres, np.array([d.bbox.size.z for d in msg.detections]),
                          [d.results[0].hypothesis.class_id for d in msg.detections])
    return out


def _compatible(display: dict, publisher_qos) -> bool:
    from rclpy.qos import ReliabilityPolicy

    wanted = display.get("Topic", {}).get("Reliability Policy", "Reliable")
    return wanted == "Best Effort" or publisher_qos.reliability == ReliabilityPolicy.RELIABLE


@pytest.mark.slow
def test_every_display_is_fed_by_the_running_node_and_player(ros_context):
    from tf2_msgs.msg import TFMessage
    from visualization_msgs.msg import Marker, MarkerArray

    from aqr_perception.ros.node_process import NodeProcess, Probe, RosProcess, node_topic, player_command

    frames: set[str] = set()

    def tf_frames(msg) -> None:
        for t in msg.transforms:
            frames.update((t.header.frame_id, t.child_frame_id))

    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    static = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    with Probe("rviz_probe", ros_context) as probe:
        gt = probe.collect(MarkerArray, "/gt/markers")
        probe.collect(TFMessage, "/tf", into=tf_frames)
        probe.collect(TFMessage, "/tf_static", static, into=tf_frames)
        with NodeProcess(["-p", "publish_debug_images:=true", "-p", "sync.calibration_wait_s:=0.5"]) as node:
            node.wait_ready()
            assert probe.wait_for_publishers([node_topic("markers")], 30)
            with RosProcess(player_command(BAG, "--rate", "0.1", "--wait-for", "/LIDAR_TOP", "/tf",
                                           "--linger", "2")) as player:
                probe.spin_until(lambda: len(gt) >= 2 or not player.running(), 60, step_s=0.1)
                assert player.running()                     # the graph is read while everything is up
                # publishers only: this probe's own subscriptions put topics in the graph too
                publishers = {t: probe.node.get_publishers_info_by_topic(t)
                              for t, _ in probe.node.get_topic_names_and_types()}
                graph = {t: sorted({i.topic_type for i in infos}) for t, infos in publishers.items()}
                probe.spin_until(lambda: not player.running(), 120, step_s=0.1)
                assert player.wait(timeout_s=10) == 0, player.output()[-3000:]
                assert "ground-truth marker arrays on /gt/markers" in player.output()
            assert node.stop() == 0, node.output()[-3000:]

    for path in CONFIGS:
        manager, displays = _displays(path)
        for d in displays:
            for topic, msgtype in subscribed(d):
                assert msgtype in graph.get(topic, []), f"{path.name} {d['Name']}: nothing publishes {msgtype} on " \
                                                        f"{topic} (published: {graph.get(topic)})"
                assert any(p.topic_type == msgtype and _compatible(d, p.qos_profile) for p in publishers[topic]), \
                    (path.name, d["Name"], "no publisher with a QoS this display's subscription matches")
        needed = {manager["Global Options"]["Fixed Frame"]} | {d["Reference Frame"] for d in displays
                                                                if "Reference Frame" in d}
        assert needed <= frames, (path.name, needed - frames)

    truth = _gt_boxes()
    assert len(gt) >= 3
    for arr in gt:
        stamp = arr.markers[0].header.stamp.sec * 10**9 + arr.markers[0].header.stamp.nanosec
        centres, heights, names = truth[stamp]
        assert arr.markers[0].action == Marker.DELETEALL
        edges = [m for m in arr.markers if m.ns == "gt_boxes"]
        labels = [m for m in arr.markers if m.ns == "gt_labels"]
        assert len(edges) == len(labels) == len(names) > 0
        for m, c, h in zip(edges, centres, heights):
            pts = np.array([[p.x, p.y, p.z] for p in m.points])
            np.testing.assert_allclose(pts.mean(axis=0), c, atol=1e-4)           # 12 edges: the box's centre
            assert pts[:, 2].max() - pts[:, 2].min() == pytest.approx(h, abs=1e-4)
            assert (m.color.r, m.color.g, m.color.b) == (1.0, 1.0, 1.0) and m.header.frame_id == "LIDAR_TOP"
        assert [m.text for m in labels] == [f"GT {n}" for n in names]
