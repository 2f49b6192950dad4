"""The demo's recording (``aqr-perception demo``; ``eval --record`` does the same) and its
animated picture of the drive. The recording is one
rosbag2 MCAP, read back here with ``rosbags``, holding the inputs as played (byte for byte),
the node's outputs and markers, diagnostics and the ground-truth markers, one per sweep;
and the shipped Foxglove layout names only topics the recording has, with their types."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from aqr_perception.cli import DEFAULT_BAG
from aqr_perception.data.typestore import project_typestore

LAYOUT = Path(__file__).resolve().parent.parent / "rviz" / "aqr_perception.foxglove.json"
OUTPUTS = {"/aqr_perception/detections": "vision_msgs/msg/Detection3DArray",
           "/aqr_perception/velocities": "aqr_perception/msg/DetectionVelocityArray",
           "/aqr_perception/routing": "aqr_perception/msg/QueryRouting",
           "/aqr_perception/markers": "visualization_msgs/msg/MarkerArray",
           "/gt/markers": "visualization_msgs/msg/MarkerArray"}
#: what each Foxglove panel draws
PANEL_TYPES = {"Image": {"sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image"},
               "3D": {"sensor_msgs/msg/PointCloud2", "visualization_msgs/msg/MarkerArray"},
               "DiagnosticSummary": {"diagnostic_msgs/msg/DiagnosticArray"}}


def _read(bag: Path) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    types, raw = {}, {}
    with Reader(bag) as reader:
        for conn in reader.connections:
            types[conn.topic] = conn.msgtype
        for conn, _, data in reader.messages():
            raw.setdefault(conn.topic, []).append(bytes(data))
    return types, raw


def _processing_values(diag) -> dict[str, str]:
    """The values of the node's processing status in a DiagnosticArray."""
    (status,) = [st for st in diag.status if st.name.endswith(": processing")]
    return {kv.key: kv.value for kv in status.values}


def _frames_published(diag) -> int:
    """The node's frames_published counter in a DiagnosticArray (its processing status)."""
    return int(_processing_values(diag).get("frames_published", 0))


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run = subprocess.run([sys.executable, "-m", "aqr_perception.cli", "demo", "--out", str(out),
                          "--set", "eval.pictures=0"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert str(out / "recording") in run.stdout
    from PIL import Image

    with Image.open(out / "replay.gif") as gif:          # the drive, every sweep a frame
        assert gif.n_frames == 16 and gif.width == 960 and gif.is_animated
        gif.seek(8)
        assert len(np.unique(np.asarray(gif.convert("RGB")).reshape(-1, 3), axis=0)) > 50   # a picture, not a blank
    assert "replay.gif" in (out / "report.md").read_text()
    return _read(out / "recording")


@pytest.mark.slow
def test_the_recording_holds_the_inputs_and_every_output(recording):
    types, raw = recording
    src_types, src = _read(DEFAULT_BAG)
    played = {t for t in src if not t.startswith("/gt/")}     # the ground truth goes as markers only
    for topic in played:
        assert types[topic] == src_types[topic] and raw[topic] == src[topic], topic
    sweeps = len(src["/LIDAR_TOP"])
    for topic, msgtype in OUTPUTS.items():
        assert types[topic] == msgtype and len(raw[topic]) == sweeps, (topic, len(raw.get(topic, [])))
    assert types["/diagnostics"] == "diagnostic_msgs/msg/DiagnosticArray" and raw["/diagnostics"]
    store = project_typestore()
    diags = [store.deserialize_cdr(m, types["/diagnostics"]) for m in raw["/diagnostics"]]
    published = [_frames_published(d) for d in diags]
    # the diagnostics follow the drive: several, counting the frames as they are published
    assert len(published) >= 4 and published == sorted(published), published
    assert published[0] == 0 and published[-1] >= sweeps // 2, published
    # the stepwise replay holds back the image of a cloud's instant that comes after it in the
    # bag, so the node waits for it (eval.replay_camera_wait_s, 0.2 s): reported as input_wait_ms,
    # not as processing time (preprocessing + inference + publishing)
    stages = [_processing_values(d) for d in diags[1:]]
    assert max(float(s["input_wait_ms"]) for s in stages) > 150, stages
    for s in stages:
        parts = sum(float(s[k]) for k in ("preprocess_ms", "inference_ms", "postprocess_ms"))
        assert parts <= float(s["processing_time_ms"]) + 0.3 < parts + 50, s
    det = store.deserialize_cdr(raw["/aqr_perception/detections"][-1], OUTPUTS["/aqr_perception/detections"])
    assert det.header.frame_id == "LIDAR_TOP" and len(det.detections) > 0


@pytest.mark.slow
def test_the_foxglove_layout_shows_what_the_recording_has(recording):
    types, raw = recording
    layout = json.loads(LAYOUT.read_text())
    panels = layout["configById"]
    named = []
    for panel_id, cfg in panels.items():
        kind = panel_id.split("!")[0]
        if kind == "Image":
            named.append((kind, cfg["imageMode"]["imageTopic"]))
        elif kind == "3D":
            named += [(kind, t) for t in cfg["topics"]]
        elif kind == "DiagnosticSummary":
            named.append((kind, cfg["topicToRender"]))
        elif kind == "Plot":
            for path in cfg["paths"]:
                topic, _, field_path = path["value"].partition(".")
                assert topic in types, topic
                msg = project_typestore().deserialize_cdr(raw[topic][-1], types[topic])
                assert field_path == "detections[:].lidar_weight" or field_path == "detections[:].camera_weight"
                assert all(hasattr(d, field_path.rsplit(".", 1)[1]) for d in msg.detections) and msg.detections
        else:
            raise AssertionError(f"a panel this test does not know: {panel_id}")
    assert sum(k == "Image" for k, _ in named) == 6
    for kind, topic in named:
        assert types.get(topic) in PANEL_TYPES[kind], (kind, topic, types.get(topic))

    def leaves(node):
        return [node] if isinstance(node, str) else leaves(node["first"]) + leaves(node["second"])

    assert sorted(leaves(layout["layout"])) == sorted(panels)    # every panel placed, once


def test_the_recorder_names_its_unmatched_topics_and_the_replay_waits_for_them(ros_context, tmp_path):
    """A message published before discovery is lost (volatile): under sim time the node's
    only /diagnostics of the short bundled drive comes at the first /clock, so the replay
    starts playing only once the recorder's subscriptions are matched (the demo's recording
    once came out without /diagnostics when discovery was slow). Real DDS, loopback."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from aqr_perception.evaluation.replay import wait_for_recorded_outputs
    from aqr_perception.ros.node_process import Probe
    from aqr_perception.ros.recorder import Recorder

    with Probe("recorder_probe", ros_context) as probe, Probe("diagnostics_peer", ros_context) as peer:
        recorder = Recorder(tmp_path / "rec", lambda: 1_000)
        recorder.subscribe(probe.node, "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")
        probe.spin(0.3)
        assert recorder.unmatched() == ["/diagnostics"]
        pub = peer.node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        wait_for_recorded_outputs(recorder, probe, log=False)
        assert recorder.unmatched() == []
        msg = DiagnosticArray(status=[DiagnosticStatus(name="aqr: test", message="the first and only one")])
        pub.publish(msg)                               # at once, as the node's first diagnostics
        probe.spin_until(lambda: recorder.counts.get("/diagnostics", 0) == 1, 10)
        recorder.close()
    types, raw = _read(tmp_path / "rec")
    assert types["/diagnostics"] == "diagnostic_msgs/msg/DiagnosticArray" and len(raw["/diagnostics"]) == 1
    got = project_typestore().deserialize_cdr(raw["/diagnostics"][0], types["/diagnostics"])
    assert got.status[0].message == "the first and only one"


def test_a_recorded_replay_publishes_diagnostics_at_least_every_replay_period():
    """Recorded replays shorten the node's diagnostics period to eval.replay_diagnostics_period_s
    (a shorter node setting is kept); a replay without a recording keeps the node's."""
    from aqr_perception.config import load_config
    from aqr_perception.evaluation.replay import replay_node_config

    cfg = load_config("tiny")
    assert cfg.node.diagnostics_period_s > cfg.eval.replay_diagnostics_period_s
    assert replay_node_config(cfg, "", "cpu", record=True).diagnostics_period_s == cfg.eval.replay_diagnostics_period_s
    assert replay_node_config(cfg, "", "cpu", record=False).diagnostics_period_s == cfg.node.diagnostics_period_s
    fast = load_config("tiny", ["node.diagnostics_period_s=0.02"])
    assert replay_node_config(fast, "", "cpu", record=True).diagnostics_period_s == 0.02
