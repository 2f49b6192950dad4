"""Synthetic drives: real rosbag2 files, geometry consistent across sensors, determinism."""
import json

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader

from aqr_perception.config import load_config
from aqr_perception.data.bag_reader import read_frames
from aqr_perception.data.boxes import box_corners, transform_boxes, yaw_matrix
from aqr_perception.data.ground_truth import read_ground_truth
from aqr_perception.data.synth.camera_sim import render
from aqr_perception.data.synth.drive import drive_cameras, generate_drive
from aqr_perception.data.synth.lidar_sim import LidarModel, simulate_sweep
from aqr_perception.data.synth.world import CLASS_SPECS, make_world
from aqr_perception.data.typestore import project_typestore
from aqr_perception.ros.msg_types import get_message

SMALL = ["synth.image_width=352", "synth.image_height=192", "synth.lidar_azimuth_steps=360",
         "synth.frames_per_drive=4"]


def _cfg(*extra):
    return load_config("tiny", overrides=SMALL + list(extra))


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_drive(_cfg(), out, "d", seed=3, picture=True)


def _messages(bag):
    with Reader(bag) as r:
        return [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in r.messages()]


def test_bag_opens_with_rosbags_and_decodes_in_rclpy(drive):
    msgs = _messages(drive.bag)
    topics = {t for t, *_ in msgs}
    assert {"/LIDAR_TOP", "/tf_static", "/tf", "/gt/detections", "/gt/velocities",
            "/CAM_FRONT/image_rect_compressed", "/CAM_BACK_RIGHT/camera_info"} <= topics
    seen = set()
    for _topic, msgtype, stamp, raw in msgs:
        if msgtype in seen:
            continue
        seen.add(msgtype)
        msg = deserialize_message(raw, get_message(msgtype))      # rclpy decodes the rosbags bytes
        if msgtype == "sensor_msgs/msg/PointCloud2":
            assert msg.width > 1000 and msg.point_step == 18 and [f.name for f in msg.fields][:3] == ["x", "y", "z"]
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
        if msgtype == "vision_msgs/msg/Detection3DArray":
            assert len(msg.detections) > 0 and msg.header.frame_id == "LIDAR_TOP"
        if msgtype == "sensor_msgs/msg/CameraInfo":
            assert (msg.width, msg.height) == (352, 192) and msg.k[0] > 0
    assert drive.lidar_frames == 4 and json.loads(drive.gt_json.read_text())["frames"]
    assert (drive.bag.parent / "d.png").stat().st_size > 10_000


def test_same_seed_gives_identical_bag_and_other_seed_does_not(tmp_path, drive):
    """The README's ``aqr-perception synth --drives N --frames N --seed S --out D`` makes the
    drive that the same seed makes in this process, message for message."""
    from cli_helpers import run_cli

    out = run_cli("synth", "--drives", "1", "--frames", "4", "--seed", "3", "--out", str(tmp_path / "cli"),
                  "--no-pictures", *[a for o in SMALL if not o.startswith("synth.frames") for a in ("--set", o)],
                  timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    bag = tmp_path / "cli" / "drive_0003_clean"
    assert _messages(bag) == _messages(drive.bag)
    assert bag.with_name(bag.name + ".gt.json").read_text() == drive.gt_json.read_text()
    other = generate_drive(_cfg(), tmp_path, "e", seed=4)
    assert _messages(other.bag) != _messages(drive.bag)


def _scene(seed=11):
    rng = np.random.default_rng(seed)
    world = make_world(rng, 1.0)
    ego = world.ego_pose(0.0)
    lidar_to_global = ego.copy()
    lidar_to_global[2, 3] += world.lidar_height
    boxes_g, objs = world.boxes(0.0)
    return world, rng, lidar_to_global, transform_boxes(boxes_g, np.linalg.inv(lidar_to_global)), objs


def test_lidar_points_lie_on_box_surfaces_or_the_ground():
    world, rng, _, boxes, objs = _scene()
    refl = np.array([CLASS_SPECS[o.cls].reflectivity for o in objs])
    model = LidarModel(azimuth_steps=720, dropout=0.0)
    pts, ring = simulate_sweep(boxes, refl, world.lidar_height, model, rng)
    assert ring.min() == 0 and ring.max() <= 31 and pts.shape[1] == 4   # upward beams only hit objects
    # distance of every point to the nearest box surface (outside or inside), or to the ground plane
    rel = pts[:, None, :3] - boxes[None, :, :3]
    local = np.einsum("nji,pnj->pni", yaw_matrix(boxes[:, 6]), rel)
    half = boxes[None, :, 3:6] / 2
    outside = np.linalg.norm(np.maximum(np.abs(local) - half, 0), axis=-1)
    inside = np.min(half - np.abs(local), axis=-1)
    to_surface = np.where(outside > 0, outside, np.maximum(inside, 0)).min(axis=1)
    to_ground = np.abs(pts[:, 2] + world.lidar_height)
    tol = 4 * model.range_noise + 1e-3
    assert np.all(np.minimum(to_surface, to_ground) <= tol * np.maximum(1, np.linalg.norm(pts[:, :3], axis=1) / 10))
    on_boxes = to_surface < to_ground
    assert on_boxes.sum() > 300            # the objects are really hit


def test_box_corners_project_where_the_object_is_rendered():
    world, _, lidar_to_global, boxes, objs = _scene()
    cfg = _cfg()
    checked = centre_hits = 0
    for cam in drive_cameras(cfg):
        out = render(cam, boxes, [o.color for o in objs], lidar_to_global, world.lidar_height)
        corners = box_corners(boxes)
        hom = np.concatenate([corners, np.ones_like(corners[..., :1])], -1) @ cam.lidar_to_camera.T
        for n in np.unique(out.ids[out.ids >= 0]):
            if np.any(hom[n, :, 2] <= 0.1):
                continue                        # partly behind the camera: skip the hull test
            uv = hom[n, :, :2] / hom[n, :, 2:3] @ cam.K[:2, :2].T + cam.K[:2, 2]
            ys, xs = np.nonzero(out.ids == n)
            # every pixel of the object lies inside the bounding rectangle of its projected corners
            assert xs.min() >= np.floor(uv[:, 0].min()) - 1 and xs.max() <= np.ceil(uv[:, 0].max()) + 1
            assert ys.min() >= np.floor(uv[:, 1].min()) - 1 and ys.max() <= np.ceil(uv[:, 1].max()) + 1
            # and the projected box centre, when unoccluded, shows the object
            c = cam.lidar_to_camera @ np.append(boxes[n, :3], 1)
            u, v = (cam.K @ (c[:3] / c[2]))[:2].astype(int)
            centre_hits += int(0 <= v < cam.height and 0 <= u < cam.width and out.ids[v, u] == n)
            checked += 1
    assert checked > 10 and centre_hits > checked // 3


@pytest.mark.parametrize("corruption", ["no_lidar", "one_camera_missing", "time_offset", "reduced_lidar", "dark",
                                        "no_intensity"])
def test_corruptions(tmp_path, drive, corruption):
    r = generate_drive(_cfg(f"synth.corruption={corruption}"), tmp_path, "c", seed=3)
    clean, bad = _messages(drive.bag), _messages(r.bag)
    n_points = lambda ms: [deserialize_message(raw, get_message(t)).width for top, t, _, raw in ms  # noqa: E731
                           if top == "/LIDAR_TOP"]
    if corruption == "no_lidar":
        assert n_points(bad) == [0] * 4
    if corruption == "reduced_lidar":
        assert all(b < 0.2 * c for b, c in zip(n_points(bad), n_points(clean)))
    if corruption == "no_intensity":
        from aqr_perception.frames.conversions import pointcloud2_to_xyzi
        clouds = lambda ms: [pointcloud2_to_xyzi(deserialize_message(raw, get_message(t)))  # noqa: E731
                             for top, t, _, raw in ms if top == "/LIDAR_TOP"]
        for b, c in zip(clouds(bad), clouds(clean)):
            np.testing.assert_array_equal(b[:, :3], c[:, :3])
            assert np.all(b[:, 3] == 0) and c[:, 3].max() > 0
    if corruption == "one_camera_missing":
        assert not any(top.startswith("/CAM_FRONT/") for top, *_ in bad)
        assert any(top.startswith("/CAM_FRONT_LEFT/") for top, *_ in bad)
    if corruption == "time_offset":
        stamps = lambda ms: [s for top, _, s, _ in ms if top == "/CAM_BACK/camera_info"]  # noqa: E731
        assert [b - c for b, c in zip(stamps(bad), stamps(clean))] == [150_000_000] * len(stamps(clean))
    if corruption == "dark":
        from aqr_perception.frames.conversions import compressed_imgmsg_to_cv2
        mean = lambda ms: np.mean([compressed_imgmsg_to_cv2(deserialize_message(raw, get_message(t))).mean()  # noqa
                                   for top, t, _, raw in ms if top == "/CAM_FRONT/image_rect_compressed"])
        assert mean(bad) < 0.35 * mean(clean)
    # GT never depends on the corruption
    assert r.gt_json.read_text().replace('"corruption": "' + corruption, "") == \
        drive.gt_json.read_text().replace('"corruption": "clean', "")


def test_reader_gives_model_arrays_and_gt_for_every_sweep(drive):
    cfg = _cfg()
    frames = list(read_frames(drive.bag, cfg))
    gt = read_ground_truth(drive.gt_json, list(cfg.model.classes))
    assert len(frames) == 4 and all(f.stamp_ns in gt for f in frames)
    arrays = frames[1].arrays
    assert arrays.images.shape == (6, 3, 192, 352) and arrays.camera_valid.all() and arrays.lidar_valid
    # the GT box centres project through lidar2img to where the camera shows them
    g = gt[frames[1].stamp_ns]
    assert g.lidar_boxes.shape[1] == 9 and (g.num_lidar_pts > 0).sum() > 5


def test_dataset_batches_feed_the_detector(drive):
    import torch

    from aqr_perception.model import build_detector
    from aqr_perception.training.dataset import DriveDataset, collate

    cfg = _cfg()
    ds = DriveDataset([(drive.bag, drive.gt_json)], cfg)
    assert len(ds) == 4
    inputs, boxes, labels = collate([ds[1], ds[2]])
    assert inputs.images.shape == (2, 6, 3, 192, 352) and inputs.images.dtype == torch.float32
    assert len(boxes) == 2 and boxes[0].shape[1] == 9 and len(labels[0]) == len(boxes[0]) > 0
    r = torch.tensor(cfg.model.point_cloud_range)
    assert torch.all((boxes[0][:, :3] >= r[:3]) & (boxes[0][:, :3] <= r[3:]))
    out = build_detector(cfg.model).eval()(inputs)
    assert torch.isfinite(out.cls_logits).all()


def test_a_yawed_lidar_mount_keeps_the_cameras_on_the_vehicle(tmp_path):
    """nuScenes' LIDAR_TOP is yawed -90 deg on the vehicle. With the mount turned, the
    cameras still look where they did (the same images, to the byte), the ground truth is
    the same in the global frame and turned by +90 deg in the LiDAR frame."""
    images, gts = [], []
    for yaw in (0, -90):
        cfg = _cfg("synth.frames_per_drive=3", f"synth.lidar_mount_yaw_deg={yaw}")
        r = generate_drive(cfg, tmp_path / str(yaw), "d", seed=8)
        store = project_typestore()
        with Reader(r.bag) as reader:
            conns = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/CompressedImage"]
            images.append([bytes(store.deserialize_cdr(raw, c.msgtype).data)
                           for c, _, raw in reader.messages(connections=conns)])
        gts.append(read_ground_truth(r.gt_json, list(cfg.model.classes)))
    assert images[0] == images[1] and len(images[0]) > 6
    for stamp, straight in gts[0].items():
        turned = gts[1][stamp]
        np.testing.assert_allclose(turned.global_boxes, straight.global_boxes, atol=1e-9)
        # a point ahead of the vehicle (+x of base_link) lies on the yawed LiDAR's +y axis
        np.testing.assert_allclose(turned.lidar_boxes[:, 0], -straight.lidar_boxes[:, 1], atol=1e-9)
        np.testing.assert_allclose(turned.lidar_boxes[:, 1], straight.lidar_boxes[:, 0], atol=1e-9)
