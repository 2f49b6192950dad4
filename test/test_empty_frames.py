"""An empty road is a normal frame: with the bundled model on a drive without objects, the
node publishes every output (empty arrays, routing, markers) for every sweep and counts
the frames as published, not failed."""
import pytest

from aqr_perception.config import load_config
from aqr_perception.data.synth.drive import generate_drive


@pytest.mark.slow
def test_frames_without_detections_publish_every_output(ros_context, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    from aqr_perception.msg import DetectionVelocityArray, QueryRouting
    from aqr_perception.ros.node_process import NodeProcess, Probe, RosProcess, node_topic, player_command

    cfg = load_config("tiny", overrides=["synth.object_density=0.0", "synth.frames_per_drive=6",
                                         "synth.lidar_azimuth_steps=360"])
    drive = generate_drive(cfg, tmp_path, "empty_road", seed=3)
    with Probe("empty_probe", ros_context) as probe:
        got = {key: probe.collect(typ, node_topic(topic)) for key, typ, topic in (
            ("det", Detection3DArray, "detections"), ("vel", DetectionVelocityArray, "velocities"),
            ("routing", QueryRouting, "routing"), ("markers", MarkerArray, "markers"))}
        got["diag"] = probe.collect(DiagnosticArray, "/diagnostics")
        with NodeProcess(["-p", "qos_reliability:=reliable", "-p", "diagnostics_period_s:=0.3",
                          "-p", "sync.calibration_wait_s:=0.5"], log=tmp_path / "node.log") as node:
            node.wait_ready()
            assert probe.wait_for_publishers([node_topic(t) for t in ("detections", "velocities", "routing",
                                                                      "markers")], 30)
            # slow enough that the node answers every sweep: then each one is published or failed
            with RosProcess(player_command(drive.bag, "--rate", "0.05", "--wait-for", "/LIDAR_TOP",
                                           "/CAM_FRONT/image_rect_compressed", "/tf", node_topic("markers"),
                                           "--linger", "3")) as player:
                probe.spin_until(lambda: not player.running(), 150, step_s=0.1)
                probe.spin(2.0)
                assert player.wait(timeout_s=10) == 0, player.output()[-3000:]
            assert node.stop() == 0, node.output()[-3000:]
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
