"""Bags as users bring them: ``ros2 bag record`` on Humble writes sqlite3 (``.db3``), and
``--compression-mode file|message --compression-format zstd`` compresses whole files or
each message. The bag readers (offline evaluation, training, the topic check before a
replay) take them as they take the project's MCAP bags: the same frames, the same answers.
So does one ROS 2 .mcap file without its folder; what rosbags cannot read (another MCAP
profile, a folder without metadata.yaml) is one line naming the cause."""
from pathlib import Path

import numpy as np
import pytest
from bag_helpers import rewrite_storage

from aqr_perception.config import load_config
from aqr_perception.data.bag_reader import check_bag_topics, read_frames
from aqr_perception.evaluation.answers import predict_offline
from aqr_perception.evaluation.evaluate import Sweeps
from aqr_perception.model.runtime import PACKAGE_RESOURCES, DetectorRuntime

CLOUDS = 3
VEHICLE_PARAMS = Path(__file__).resolve().parent.parent / "config" / "aqr_perception.param.yaml"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The bundled drive's first clouds as MCAP (what the project writes) and its answers."""
    cfg = load_config("tiny")
    bag = rewrite_storage(PACKAGE_RESOURCES / "default_drive", tmp_path_factory.mktemp("mcap") / "drive", "mcap",
                          clouds=CLOUDS)
    runtime = DetectorRuntime(PACKAGE_RESOURCES / "cmt_aqr_tiny.pt", device="cpu")
    return cfg, bag, runtime, predict_offline(bag, cfg, runtime)


@pytest.mark.parametrize("compression", ["none", "file", "message"])
def test_a_sqlite3_bag_reads_and_evaluates_as_its_mcap_twin(reference, tmp_path, compression):
    import os

    cfg, mcap, runtime, answers = reference
    bag = rewrite_storage(mcap, tmp_path / "drive", "sqlite3", compression)
    names = sorted(os.listdir(bag))
    assert any(n.endswith(".db3.zstd" if compression == "file" else ".db3") for n in names), names
    check_bag_topics(bag, cfg.node)
    a, b = Sweeps(), Sweeps()
    a.add(mcap, cfg.node.lidar_topic, {})
    b.add(bag, cfg.node.lidar_topic, {})
    assert (b.in_bags, b.bag_seconds) == (a.in_bags, a.bag_seconds) and a.in_bags == CLOUDS
    theirs = predict_offline(bag, cfg, runtime)
    assert sorted(theirs) == sorted(answers) and len(answers) == CLOUDS
    for token, ours in answers.items():
        assert theirs[token].names == ours.names and len(ours.names) > 0
        np.testing.assert_array_equal(theirs[token].boxes, ours.boxes)
        np.testing.assert_array_equal(theirs[token].scores, ours.scores)
    if compression == "message":    # the training reader too: the frames the model is trained on
        for f, g in zip(read_frames(mcap, cfg), read_frames(bag, cfg), strict=True):
            np.testing.assert_array_equal(f.arrays.points, g.arrays.points)
            np.testing.assert_array_equal(f.arrays.images, g.arrays.images)


def test_play_sends_a_compressed_sqlite3_bag_message_for_message(reference, tmp_path, ros_context):
    """``aqr-perception play`` (the ros2 bag play stand-in) on a message-compressed sqlite3
    bag: every message of a camera topic and of the cloud topic arrives over loopback DDS,
    equal to the MCAP twin's as rosbags reads them (compared as messages: rclpy leaves the
    CDR padding bytes uninitialised when it serialises)."""

    from cli_helpers import play_while_spinning
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import CompressedImage, PointCloud2

    _, mcap, _, _ = reference
    bag = rewrite_storage(mcap, tmp_path / "drive", "sqlite3", "message")
    topics = {"/CAM_FRONT/image_rect_compressed": CompressedImage, "/LIDAR_TOP": PointCloud2}
    with Reader(mcap) as reader:
        want = {t: [deserialize_message(bytes(raw), m) for c, _, raw in reader.messages() if c.topic == t]
                for t, m in topics.items()}
    node = Node("storage_play_probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    got: dict[str, list] = {t: [] for t in topics}
    for topic, msg_type in topics.items():
        node.create_subscription(msg_type, topic, lambda m, t=topic: got[t].append(m),
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    try:
        returncode, err = play_while_spinning(executor, bag, "--rate", "2", "--wait-for", *topics)
    finally:
        executor.shutdown()
        node.destroy_node()
    assert returncode == 0, err[-3000:]
    assert len(want["/LIDAR_TOP"]) == CLOUDS and want["/CAM_FRONT/image_rect_compressed"]
    for topic in topics:
        assert got[topic] == want[topic], topic


def test_one_ros2_mcap_file_reads_as_its_bag_folder(reference):
    """The path of a bag's .mcap file (copied out of its folder, say) is a bag too."""
    cfg, mcap, runtime, answers = reference
    (single,) = mcap.glob("*.mcap")
    theirs = predict_offline(single, cfg, runtime)
    assert sorted(theirs) == sorted(answers)
    for token, ours in answers.items():
        np.testing.assert_array_equal(theirs[token].boxes, ours.boxes)


def _foxglove_like(src_mcap, dst):
    """An MCAP whose header names the profile Foxglove's nuscenes2mcap writes ("", with
    protobuf messages) instead of "ros2"; readers stop at the header, so the records after
    it are the source file's."""
    import struct

    data = src_mcap.read_bytes()
    magic, opcode = data[:8], data[8]
    assert opcode == 0x01                                  # the Header record comes first
    length = struct.unpack_from("<Q", data, 9)[0]
    body = data[17:17 + length]
    profile_len = struct.unpack_from("<I", body, 0)[0]
    assert body[4:4 + profile_len] == b"ros2"
    new_body = struct.pack("<I", 0) + body[4 + profile_len:]
    dst.write_bytes(magic + bytes([opcode]) + struct.pack("<Q", len(new_body)) + new_body + data[17 + length:])
    return dst


def test_a_bag_rosbags_cannot_read_is_one_line_naming_the_cause(reference, tmp_path):
    """A Foxglove MCAP (not ROS 2 messages) to eval, a bag folder without its metadata.yaml
    to train: exit code 2 and one line saying why and what to do, before any work (before:
    eval printed rosbags' traceback, train a bare 'Expected metadata file')."""
    import shutil

    from cli_helpers import run_cli

    _, mcap, _, _ = reference
    (src,) = mcap.glob("*.mcap")
    fox = _foxglove_like(src, tmp_path / "scene-0061.mcap")
    shutil.copy(PACKAGE_RESOURCES / "default_drive.gt.json", tmp_path / "scene-0061.mcap.gt.json")
    out = run_cli("eval", "--bag", str(fox), "--mode", "offline", "--out", str(tmp_path / "out"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert f"{fox}: not a readable ROS 2 bag" in lines[0] and "aqr-perception nuscenes2bag" in lines[0]
    assert not (tmp_path / "out").exists()
    data = tmp_path / "data"
    (data / "drive_0001").mkdir(parents=True)
    shutil.copy(src, data / "drive_0001" / src.name)                        # metadata.yaml left behind
    shutil.copy(PACKAGE_RESOURCES / "default_drive.gt.json", data / "drive_0001.gt.json")
    out = run_cli("train", "--data", str(data), "--out", str(tmp_path / "train"), "--quiet", "--max-steps", "1")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert "drive_0001: not a readable ROS 2 bag" in lines[0] and "metadata.yaml" in lines[0]


def test_train_takes_one_drive_and_mcap_files_as_eval_does(reference, tmp_path, capsys):
    """``train --data`` takes what eval's ``--bag`` takes: one drive (a bag folder with
    <bag>.gt.json beside it; before: "no drives") and a folder whose drives are .mcap files
    (before: not seen). Both train on the same frames: the same loss after one step."""
    import json
    import shutil

    import aqr_perception.training.train as train_mod

    _, mcap, _, _ = reference
    gt = PACKAGE_RESOURCES / "default_drive.gt.json"
    shutil.copytree(mcap, tmp_path / "drive")
    shutil.copy(gt, tmp_path / "drive.gt.json")
    (src,) = mcap.glob("*.mcap")
    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(src, files / "drive.mcap")
    shutil.copy(gt, files / "drive.mcap.gt.json")
    losses = []
    # the first as the README's line for one's own bag: the vehicle's parameter file names the topics
    for data, extra in ((tmp_path / "drive", ["--node-params", str(VEHICLE_PARAMS)]), (files, [])):
        out = tmp_path / f"out_{data.name}"
        rc = train_mod.main(["--data", str(data), "--out", str(out), "--quiet", "--max-steps", "1", *extra])
        assert rc == 0, capsys.readouterr().err
        summary = json.loads((out / "train_summary.json").read_text())
        assert (summary["drives"], summary["frames"], summary["step"]) == (1, CLOUDS, 1)
        losses.append(summary["loss_last_20"])
    assert losses[0] == losses[1]
    # fewer frames than a batch: refused in one line, no model "trained" on nothing
    rc = train_mod.main(["--data", str(files), "--out", str(tmp_path / "none"), "--quiet", "--set",
                         f"train.batch_size={CLOUDS + 1}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"not one batch of train.batch_size={CLOUDS + 1}" in err[0], err
    assert not (tmp_path / "none" / "final.pt").exists()
