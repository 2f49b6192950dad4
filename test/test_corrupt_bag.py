"""Corruptions of a recorded bag (``robustness --bag``): the copy, decoded by ``rosbags``,
holds exactly what the condition says and the rest byte for byte."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from aqr_perception.cli import DEFAULT_BAG
from aqr_perception.config import ConfigError, load_config
from aqr_perception.data import rosbag_msgs as M
from aqr_perception.data.corrupt_bag import corrupt_bag, corrupt_cloud
from aqr_perception.data.typestore import project_typestore

CFG = load_config("tiny")
STORE = project_typestore()
LIDAR, FRONT = "/LIDAR_TOP", "/CAM_FRONT/image_rect_compressed"


def _messages(bag) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(bag) as reader:
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, bytes(raw)))
    return out


def _points(raw: bytes) -> np.ndarray:
    """The cloud as a structured array, read from its own field table."""
    msg = STORE.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2")
    types = {7: "<f4", 4: "<u2"}
    dtype = np.dtype({"names": [f.name for f in msg.fields], "formats": [types[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    return np.frombuffer(bytes(msg.data), dtype=dtype, count=msg.width * msg.height)


@pytest.fixture(scope="module")
def source():
    return _messages(DEFAULT_BAG)


def _corrupt(tmp_path, condition):
    corrupt_bag(DEFAULT_BAG, tmp_path / condition, condition, CFG, seed=3)
    return _messages(tmp_path / condition)


def _same_except(src, out, changed: set[str], gone: set[str] = frozenset()):
    assert set(out) == set(src) - set(gone)
    for topic in set(src) - set(changed) - set(gone):
        assert out[topic] == src[topic], topic
    for topic in changed:
        assert [s for s, _ in out[topic]] == [s for s, _ in src[topic]]     # bag times kept


def test_lidar_conditions(source, tmp_path):
    empty = _corrupt(tmp_path, "no_lidar")
    _same_except(source, empty, {LIDAR})
    assert all(len(_points(raw)) == 0 for _, raw in empty[LIDAR])
    flat = _corrupt(tmp_path, "no_intensity")
    _same_except(source, flat, {LIDAR})
    reduced = _corrupt(tmp_path, "reduced_lidar")
    _same_except(source, reduced, {LIDAR})
    for (_, a), (_, b), (_, c) in zip(source[LIDAR], flat[LIDAR], reduced[LIDAR]):
        pa, pb, pc = _points(a), _points(b), _points(c)
        for k in "xyz":
            np.testing.assert_array_equal(pa[k], pb[k])
        assert (pb["intensity"] == 0).all() and (pa["intensity"] != 0).any()
        assert (pc["ring"] % CFG.synth.reduced_lidar_keep_every == 0).all()
        share = len(pc) / len(pa)               # a quarter of the beams, half of their points
        assert 0.08 < share < 0.18, share
        kept = {tuple(r) for r in np.stack([pa["x"], pa["y"], pa["z"]], 1).tolist()}
        assert all(tuple(r) in kept for r in np.stack([pc["x"], pc["y"], pc["z"]], 1).tolist())


def test_camera_conditions(source, tmp_path):
    cams = [f"/{c}/image_rect_compressed" for c in CFG.node.camera_names]
    infos = [f"/{c}/camera_info" for c in CFG.node.camera_names]
    _same_except(source, _corrupt(tmp_path, "no_cameras"), set(), set(cams + infos))
    _same_except(source, _corrupt(tmp_path, "one_camera_missing"), set(), {FRONT, "/CAM_FRONT/camera_info"})
    dark = _corrupt(tmp_path, "dark")
    _same_except(source, dark, set(cams))
    for (_, a), (_, b) in zip(source[FRONT], dark[FRONT]):
        img = lambda raw: cv2.imdecode(np.frombuffer(bytes(STORE.deserialize_cdr(  # noqa: E731
            raw, "sensor_msgs/msg/CompressedImage").data), np.uint8), cv2.IMREAD_COLOR).astype(float)
        ia, ib = img(a), img(b)
        assert ia.shape == ib.shape and 0.12 < ib.mean() / ia.mean() < 0.3
    late = _corrupt(tmp_path, "time_offset")
    _same_except(source, late, set(cams + infos))
    for topic, msgtype in ((FRONT, "sensor_msgs/msg/CompressedImage"), ("/CAM_FRONT/camera_info",
                                                                         "sensor_msgs/msg/CameraInfo")):
        for (_, a), (_, b) in zip(source[topic], late[topic]):
            ha, hb = (STORE.deserialize_cdr(r, msgtype).header.stamp for r in (a, b))
            assert (hb.sec * 10**9 + hb.nanosec) - (ha.sec * 10**9 + ha.nanosec) == round(
                CFG.synth.time_offset_s * 1e9)


def test_fog_and_a_cloud_without_rings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="depth"):
        corrupt_bag(DEFAULT_BAG, tmp_path / "fog", "fog", CFG)
    cloud = M.pointcloud2(0, "lidar", np.ones((5, 4), np.float32))
    with pytest.raises(ConfigError, match="ring"):
        corrupt_cloud(cloud, "reduced_lidar", CFG, np.random.default_rng(0))


def test_an_organised_padded_cloud_with_other_field_types():
    """height 2, rows padded to 8 bytes past the points, uint8 intensity at offset 12 and a
    float32 ring: the corruption reads the cloud's own layout."""
    PF = STORE.types["sensor_msgs/msg/PointField"]
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": ["<f4", "<f4", "<f4", "u1", "<f4"],
                      "offsets": [0, 4, 8, 12, 16], "itemsize": 20})
    pts = np.zeros((2, 3), dtype)
    pts["x"] = np.arange(6).reshape(2, 3)
    pts["intensity"] = 200
    pts["ring"] = [[0, 1, 4], [5, 8, 2]]
    rows = np.concatenate([pts.view(np.uint8).reshape(2, 60), np.full((2, 8), 7, np.uint8)], axis=1)
    fields = [PF(name=n, offset=o, datatype=t, count=1) for n, o, t in
              (("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 2), ("ring", 16, 7))]

    def cloud():
        return STORE.types["sensor_msgs/msg/PointCloud2"](
            header=M.header(0, "lidar"), height=2, width=3, fields=fields, is_bigendian=False, point_step=20,
            row_step=68, data=rows.reshape(-1).copy(), is_dense=True)

    flat = corrupt_cloud(cloud(), "no_intensity", CFG, np.random.default_rng(0))
    got = np.frombuffer(bytes(flat.data), dtype)
    assert (flat.height, flat.width, flat.row_step) == (1, 6, 120)
    assert (got["intensity"] == 0).all() and got["x"].tolist() == list(range(6))
    cfg = load_config("tiny", ["synth.reduced_lidar_drop=0"])
    kept = np.frombuffer(bytes(corrupt_cloud(cloud(), "reduced_lidar", cfg, np.random.default_rng(0)).data), dtype)
    assert kept["ring"].tolist() == [0, 4, 8] and kept["x"].tolist() == [0, 2, 4]


@pytest.mark.slow
def test_robustness_on_a_users_bag(tmp_path):
    """``aqr-perception robustness --bag`` as a user runs it: the bundled drive under three
    conditions, scored against its one ground truth."""
    out = tmp_path / "rob"
    cmd = [sys.executable, "-m", "aqr_perception.cli", "robustness", "--bag", str(DEFAULT_BAG), "--out", str(out)]
    run = subprocess.run([*cmd, "--conditions", "clean", "no_lidar", "no_cameras"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((out / "robustness.json").read_text())
    assert report["bags"] == [str(DEFAULT_BAG)] and report["seeds"] is None
    r = {c: report["results"][c]["aqr"] for c in ("clean", "no_lidar", "no_cameras")}
    assert r["clean"]["num_gt"] == r["no_lidar"]["num_gt"] == r["no_cameras"]["num_gt"] > 0
    assert r["no_lidar"]["NDS"] < r["clean"]["NDS"] and r["no_cameras"]["NDS"] < r["clean"]["NDS"]
    assert r["no_lidar"]["mean_lidar_weight"] != r["no_lidar"]["mean_lidar_weight"]       # NaN: no LiDAR frames
    assert (out / "data" / "no_lidar" / "default_drive.gt.json").read_text() == \
        DEFAULT_BAG.with_name("default_drive.gt.json").read_text()
    assert "Your bags" in (out / "robustness.md").read_text()
    refused = subprocess.run([*cmd, "--conditions", "fog"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "depth" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("single_file", [False, True], ids=["bag_folder", "one_mcap_file"])
def test_a_topic_of_a_type_the_project_does_not_know_is_copied_as_recorded(tmp_path, single_file):
    """A vehicle's bag with a vendor's message type: the corrupted copy holds it byte for byte
    under its recorded type and definition hash (before: rosbags' "Type ... is unknown"
    traceback before the first message), and the condition applies to the rest. One .mcap
    file records no hash (rosbags reads it as ''): the copy computes it from the definition."""
    from bag_helpers import VENDOR_TYPE, with_vendor_topic

    folder = with_vendor_topic(DEFAULT_BAG, tmp_path / "vehicle", clouds=2)
    bag = next(folder.glob("*.mcap")) if single_file else folder
    corrupt_bag(bag, tmp_path / "no_lidar", "no_lidar", CFG)
    src, out = _messages(bag), _messages(tmp_path / "no_lidar")
    _same_except(src, out, {LIDAR})
    assert len(out["/vehicle/status"]) == 2 and all(len(_points(raw)) == 0 for _, raw in out[LIDAR])
    with Reader(folder) as a, Reader(tmp_path / "no_lidar") as b:
        (was,), (now,) = ([(c.msgtype, c.digest) for c in r.connections if c.topic == "/vehicle/status"]
                          for r in (a, b))
    assert now == was and was[0] == VENDOR_TYPE and was[1].startswith("RIHS01_")
