"""Acceptance of the node: a player process plays six cameras + LiDAR from the bundled
drive, the node runs as its own process, and this process receives its outputs over
loopback DDS. One camera is withheld: the node keeps publishing and reports it stale."""
from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader

from aqr_perception.data.typestore import project_typestore
from aqr_perception.model.checkpoint import read_model_config
from aqr_perception.model.runtime import BUNDLED_CHECKPOINT

BAG = Path(__file__).resolve().parent.parent / "aqr_perception" / "resources" / "default_drive"
WITHHELD = "CAM_BACK"


def _bag_lidar_stamps():
    store = project_typestore()
    with Reader(BAG) as r:
        conns = [c for c in r.connections if c.topic == "/LIDAR_TOP"]
        stamps = set()
        for c, _, raw in r.messages(connections=conns):
            h = store.deserialize_cdr(raw, c.msgtype).header
            stamps.add(h.stamp.sec * 10**9 + h.stamp.nanosec)
    return stamps


@pytest.mark.slow
def test_node_process_detects_from_played_bag_and_reports_withheld_camera(ros_context):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import Marker, MarkerArray

    from aqr_perception.msg import DetectionVelocityArray, QueryRouting
    from aqr_perception.ros.node_process import NodeProcess, Probe, RosProcess, node_topic, player_command

    with Probe("e2e_probe", ros_context) as probe:
        got = {"det": probe.collect(Detection3DArray, node_topic("detections")),
               "markers": probe.collect(MarkerArray, node_topic("markers")),
               "routing": probe.collect(QueryRouting, node_topic("routing")),
               "vel": probe.collect(DetectionVelocityArray, node_topic("velocities")),
               "diag": probe.collect(DiagnosticArray, "/diagnostics"),
               "debug_front": probe.collect(Image, node_topic("debug/CAM_FRONT/image")),
               "debug_withheld": probe.collect(Image, node_topic(f"debug/{WITHHELD}/image"))}
        with NodeProcess(["-p", "score_threshold:=0.0", "-p", "qos_reliability:=reliable",
                          "-p", "diagnostics_period_s:=0.5", "-p", "sync.calibration_wait_s:=0.5",
                          "-p", "publish_debug_images:=true"]) as node:
            node.wait_ready()
            assert probe.wait_for_publishers([node_topic("detections"), node_topic("routing")], 30)
            # /tf too: a sweep played before the node's /tf reader is matched has no ego pose
            with RosProcess(player_command(BAG, "--rate", "0.2",
                                           "--wait-for", "/LIDAR_TOP", "/CAM_FRONT/image_rect_compressed", "/tf",
                                           "--exclude", f"/{WITHHELD}/image_rect_compressed",
                                           f"/{WITHHELD}/camera_info", "--linger", "3")) as player:
                probe.spin_until(lambda: not player.running(), 150, step_s=0.1)
                probe.spin(3.0)          # the node may still be finishing its last frame
                assert player.wait(timeout_s=10) == 0, player.output()[-3000:]
            assert node.stop() == 0, f"the node must exit cleanly on Ctrl-C\n{node.output()[-3000:]}"

    assert len(got["det"]) >= 3, f"only {len(got['det'])} detection arrays received"
    stamps = _bag_lidar_stamps()
    for det in got["det"]:
        assert det.header.frame_id == "LIDAR_TOP"
        assert det.header.stamp.sec * 10**9 + det.header.stamp.nanosec in stamps   # header = the cloud's
        assert 0 < len(det.detections) <= 200
        assert all(0.0 <= d.results[0].hypothesis.score <= 1.0 for d in det.detections)
    by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in got["routing"]}
    det = got["det"][-1]
    routing = by_stamp[(det.header.stamp.sec, det.header.stamp.nanosec)]
    assert [r.id for r in routing.detections] == [d.id for d in det.detections]
    assert WITHHELD in routing.cameras_masked and WITHHELD not in routing.cameras_available
    assert routing.lidar_available
    assert got["vel"] and len(got["vel"][-1].velocities) == len(got["det"][-1].detections)
    markers = got["markers"][-1].markers
    assert markers[0].action == Marker.DELETEALL
    assert {m.ns for m in markers[1:]} == {"boxes", "heading", "labels"}
    # diagnostics name the withheld camera as stale
    inputs = [s for d in got["diag"] for s in d.status if s.name.endswith(": inputs")]
    assert any(WITHHELD in s.message and s.level != b"\x00" for s in inputs)
    assert any(kv.key == f"stale.{WITHHELD}" for s in inputs for kv in s.values)
    # the bundled model reads past sweeps: the node took the ego pose of every sweep from /tf
    sweeps = read_model_config(BUNDLED_CHECKPOINT).lidar.sweeps
    last = {kv.key: kv.value for kv in inputs[-1].values}
    if sweeps > 1:
        assert last["sweeps.per_sample"] == str(sweeps) and last["sweeps.frames_without_pose"] == "0"
        assert last["sweeps.skipped_not_kept"].isdigit()       # skipped clouds the history could not keep
        assert last["tf.time_jumps"] == "0"                     # the bag plays once: /tf never went back
    else:
        assert "sweeps.per_sample" not in last
    # debug images: the model's view of each camera used, stamped like the cloud; none for the withheld one
    assert got["debug_front"] and not got["debug_withheld"]
    det_stamps = {(d.header.stamp.sec, d.header.stamp.nanosec) for d in got["det"]}
    for img in got["debug_front"]:
        assert (img.header.stamp.sec, img.header.stamp.nanosec) in det_stamps
        assert (img.height, img.width, img.encoding) == (192, 352, "rgb8") and img.header.frame_id == "CAM_FRONT"
    model = [s for d in got["diag"] for s in d.status if s.name.endswith(": model")]
    assert model and any(kv.key == "device" and kv.value == "cpu" for kv in model[-1].values)
