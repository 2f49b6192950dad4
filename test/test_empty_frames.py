"""An empty road is a normal frame: with the bundled model on a drive without objects, the
node publishes every output (empty arrays, routing, markers) for every sweep and counts
the frames as published, not failed."""
import subprocess
import sys
import time

import pytest

from aqr_perception.config import load_config
from aqr_perception.data.synth.drive import generate_drive


@pytest.mark.slow
def test_frames_without_detections_publish_every_output(ros_context, tmp_path):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    from aqr_perception.msg import DetectionVelocityArray, QueryRouting

    cfg = load_config("tiny", overrides=["synth.object_density=0.0", "synth.frames_per_drive=6",
                                         "synth.lidar_azimuth_steps=360"])
    drive = generate_drive(cfg, tmp_path, "empty_road", seed=3)
    probe = rclpy.create_node("empty_probe", context=ros_context)
    got = {k: [] for k in ("det", "vel", "routing", "markers", "diag")}
    for key, typ, topic in (("det", Detection3DArray, "detections"), ("vel", DetectionVelocityArray, "velocities"),
                            ("routing", QueryRouting, "routing"), ("markers", MarkerArray, "markers")):
        probe.create_subscription(typ, f"/aqr_perception/{topic}", got[key].append, 50)
    probe.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 50)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(probe)
    node = subprocess.Popen([sys.executable, "-m", "aqr_perception.ros.node", "--ros-args",
                             "-p", "qos_reliability:=reliable", "-p", "diagnostics_period_s:=0.3",
                             "-p", "sync.calibration_wait_s:=0.5"])
    player = None
    try:
        # slow enough that the node answers every sweep: then each one is published or failed
        player = subprocess.Popen([sys.executable, "-m", "aqr_perception.ros.player", str(drive.bag), "--rate", "0.05",
                                   "--wait-for", "/LIDAR_TOP", "/CAM_FRONT/image_rect_compressed", "/tf",
                                   "/aqr_perception/markers", "--linger", "3"])
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and player.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        for _ in range(20):
            executor.spin_once(timeout_sec=0.1)
        assert player.wait(timeout=10) == 0
    finally:
        for proc in (player, node):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        node.wait(timeout=20)
        executor.shutdown()
        probe.destroy_node()
    assert node.returncode == 0
    assert len(got["det"]) >= 4, f"{len(got['det'])} frames answered"
    empty = [d for d in got["det"] if not d.detections]
    assert empty, "the bundled model found objects on an empty road: the test exercises nothing"
    # every frame, empty or not, has all its outputs
    stamps = lambda msgs: sorted((m.header.stamp.sec, m.header.stamp.nanosec) for m in msgs)  # noqa: E731
    assert stamps(got["det"]) == stamps(got["vel"]) == stamps(got["routing"])
    assert len(got["markers"]) == len(got["det"])
    for r in got["routing"]:
        if not r.detections:
            assert r.lidar_available and r.cameras_available
    counters = {kv.key: kv.value for s in got["diag"][-1].status if s.name.endswith(": processing") for kv in s.values}
    assert counters.get("frames_published") == str(len(got["det"]))
    assert "frames_failed" not in counters
