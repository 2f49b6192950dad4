"""Multi-sweep LiDAR input: ego-motion compensation, time lags, /tf interpolation, and the
whole path on a synthetic drive (past points land where the ground truth says)."""
import json

import numpy as np
import pytest
import torch
from bag_helpers import tf_after_clouds
from scipy.spatial.transform import Rotation

from aqr_perception.config import load_config
from aqr_perception.data.bag_reader import feed_bag
from aqr_perception.data.boxes import points_in_boxes
from aqr_perception.data.synth.drive import generate_drive
from aqr_perception.frames.ego_pose import EgoPoses
from aqr_perception.frames.pipeline import FramePipeline
from aqr_perception.frames.sweeps import NS, SweepAccumulator
from aqr_perception.model.lidar import LidarBranch
from aqr_perception.stamps import header_ns

SMALL = ["synth.image_width=352", "synth.image_height=192", "synth.lidar_azimuth_steps=360",
         "synth.frames_per_drive=6"]
SWEEPS = ["model.lidar.sweeps=3", "model.lidar.point_features=5"]


def _pose(yaw: float, xyz) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw).as_matrix()
    T[:3, 3] = xyz
    return T


def test_past_sweeps_are_moved_into_the_current_frame_with_their_age():
    rng = np.random.default_rng(0)
    world = rng.uniform(-20, 20, (50, 3))                        # static points, fixed frame
    poses = [_pose(0.1 * k, [3.0 * k, 0.5 * k, 0.0]) for k in range(4)]
    acc = SweepAccumulator(sweeps=3, max_age_s=0.5)
    for k, P in enumerate(poses):
        local = (np.linalg.inv(P) @ np.c_[world, np.ones(50)].T).T[:, :3]
        out = acc.add(k * NS // 20, np.c_[local, np.full(50, k)], P)
    # current frame: sweep 3; each static point appears once per kept sweep at the same place
    expect = (np.linalg.inv(poses[3]) @ np.c_[world, np.ones(50)].T).T[:, :3]
    assert out.shape == (150, 5)
    for j, lag in enumerate([0.0, 0.05, 0.1]):          # current first, then newest past
        part = out[50 * j: 50 * (j + 1)]
        np.testing.assert_allclose(part[:, :3], expect, atol=1e-4)
        np.testing.assert_allclose(part[:, 4], lag, atol=1e-7)
        assert np.all(part[:, 3] == 3 - j)                 # intensity carried (sweep id here)


def test_history_rules_age_missing_pose_time_jump_and_empty_sweep():
    pts = np.ones((10, 4), np.float32)
    acc = SweepAccumulator(sweeps=4, max_age_s=0.12)
    acc.add(0, pts, np.eye(4))
    acc.add(NS // 20, pts, np.eye(4))
    assert len(acc.add(2 * NS // 20, pts, np.eye(4))) == 30
    assert len(acc.add(3 * NS // 20 + NS // 100, pts, np.eye(4))) == 30    # the 0.16 s old sweep is too old
    assert len(acc.add(4 * NS // 20, pts, None)) == 10                       # no pose: alone
    assert acc.counters.frames_without_pose == 1
    assert len(acc.add(5 * NS // 20, pts, np.eye(4))) == 10                  # history was cleared
    assert len(acc.add(6 * NS // 20, pts, np.eye(4))) == 20
    assert len(acc.add(NS // 20, pts, np.eye(4))) == 10                      # time went back (bag loop)
    assert len(acc.add(2 * NS // 20, np.zeros((0, 4)), np.eye(4))) == 0     # LiDAR out: nothing old
    assert acc.counters.history_resets >= 3


def test_tf_lookup_interpolates_between_samples_and_never_extrapolates():
    poses = EgoPoses(max_interval_s=1.0)
    # constant yaw rate and speed: slerp/lerp between two samples is exact
    pose = lambda t: _pose(0.4 * t, [5.0 * t, 1.0, 0.0])  # noqa: E731
    for t in (0.0, 0.1, 0.2):
        poses.add("map", "base_link", int(t * NS), pose(t))
    np.testing.assert_allclose(poses.edges_at(int(0.13 * NS))[("map", "base_link")], pose(0.13), atol=1e-9)
    np.testing.assert_allclose(poses.edges_at(int(0.1 * NS))[("map", "base_link")], pose(0.1), atol=1e-12)
    assert poses.edges_at(int(0.21 * NS)) == {}         # after the newest sample: not yet known
    assert poses.edges_at(-1) == {}
    poses.add("map", "base_link", int(5.0 * NS), pose(5.0))
    assert poses.edges_at(int(3.0 * NS)) == {}          # a 4.8 s hole is not interpolated


def test_single_sweep_points_given_to_a_multi_sweep_model_get_a_zero_time_lag():
    cfg = load_config("tiny", overrides=SWEEPS).model
    torch.manual_seed(0)
    branch = LidarBranch(cfg).eval()
    pts = torch.rand(500, 4) * 40 - 20
    with torch.no_grad():
        a = branch([pts])
        b = branch([torch.cat([pts, torch.zeros(500, 1)], 1)])
    torch.testing.assert_close(a, b)


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    cfg = load_config("tiny", overrides=SMALL)
    return generate_drive(cfg, tmp_path_factory.mktemp("sweeps"), "d", seed=5)


def test_accumulated_points_of_a_drive_lie_on_the_ground_truth_moved_back_by_its_velocity(drive):
    """Independent reference: the drive's GT (per instance: LiDAR-frame box with velocity, and
    the number of LiDAR points the simulator put on it). The points of the sweep ``lag``
    seconds back that fall in an object's current box moved back by velocity x lag are
    exactly the points that sweep had on the object; without ego-motion compensation
    (ego at 4-10 m/s) they would be metres off."""
    cfg = load_config("tiny", overrides=SMALL + SWEEPS)
    gt_frames = {int(f["stamp_ns"]): {b["instance"]: b for b in f["boxes"]}
                 for f in json.loads(drive.gt_json.read_text())["frames"]}
    pipeline = FramePipeline(cfg.node, input_hw=(192, 352), lidar=cfg.model.lidar)
    frames = []
    feed_bag(drive.bag, pipeline, lambda c: frames.append((header_ns(c), pipeline.assemble(c).arrays.points)))
    assert pipeline.sweeps.counters.frames_without_pose == 0
    compared = moving = 0
    for stamp, pts in frames[2:]:
        for lag_ns in (NS // 20, NS // 10):
            past = pts[np.isclose(pts[:, 4], lag_ns / NS, atol=1e-4)]
            assert len(past) > 1000
            then = gt_frames[stamp - lag_ns]
            for inst, b in gt_frames[stamp].items():
                if inst not in then or then[inst]["num_lidar_pts"] == 0:
                    continue
                width, length, height = b["size"]
                box = np.array([[*b["lidar"]["center"], length, width, height, b["lidar"]["yaw"]]])
                box[0, :2] -= np.asarray(b["lidar"]["velocity"][:2]) * lag_ns / NS
                n = int(points_in_boxes(past[:, :3], box, margin=0.1).sum())
                expect = then[inst]["num_lidar_pts"]
                assert abs(n - expect) <= 2 + 0.02 * expect, (inst, b["detection_name"], n, expect)
                compared += 1
                moving += np.hypot(*b["lidar"]["velocity"][:2]) * lag_ns / NS > 0.3
    assert compared > 20 and moving > 3


def test_without_tf_the_pipeline_uses_each_sweep_alone_and_counts_it(drive):
    cfg = load_config("tiny", overrides=SMALL + SWEEPS + ["node.fixed_frame=odom"])   # no such frame on /tf
    pipeline = FramePipeline(cfg.node, input_hw=(192, 352), lidar=cfg.model.lidar)
    lags = []
    feed_bag(drive.bag, pipeline, lambda c: lags.append(np.unique(pipeline.assemble(c).arrays.points[:, 4])))
    assert all(list(u) == [0.0] for u in lags)
    assert pipeline.sweeps.counters.frames_without_pose == len(lags) == 6


def test_clouds_skipped_under_load_still_serve_as_past_sweeps(drive):
    """The node runs the model on every other cloud (overload) and only remembers the
    others: the samples still see the sweeps 50 and 100 ms back, moved like any other."""
    cfg = load_config("tiny", overrides=SMALL + SWEEPS)
    every = FramePipeline(cfg.node, input_hw=(192, 352), lidar=cfg.model.lidar)
    half = FramePipeline(cfg.node, input_hw=(192, 352), lidar=cfg.model.lidar)
    full, skipping = {}, {}
    feed_bag(drive.bag, every, lambda c: full.__setitem__(header_ns(c), every.assemble(c).arrays.points))
    count = iter(range(100))

    def on_cloud(c):
        if next(count) % 2:
            skipping[header_ns(c)] = half.assemble(c).arrays.points
        else:
            half.remember_sweep(c)

    feed_bag(drive.bag, half, on_cloud)
    assert len(skipping) == 3
    for stamp, pts in list(skipping.items())[1:]:
        np.testing.assert_array_equal(pts, full[stamp])


def test_a_skipped_cloud_the_history_cannot_keep_is_counted(drive):
    """A cloud skipped under load that does not read (no 'z' field), or comes older than the
    history, is left out of the past sweeps and counted; before, it vanished without a
    count (its cloud is in clouds_skipped_newest_wins, but never in clouds_invalid)."""
    import copy

    cfg = load_config("tiny", overrides=SMALL + SWEEPS)
    pipeline = FramePipeline(cfg.node, input_hw=(192, 352), lidar=cfg.model.lidar)
    clouds = []
    feed_bag(drive.bag, pipeline, clouds.append)
    for c in clouds[:3]:
        pipeline.remember_sweep(c)
    kept = [h.stamp_ns for h in pipeline.sweeps.history]
    assert pipeline.sweeps.counters.skipped_not_kept == 0 and kept[0] == header_ns(clouds[2])
    broken = copy.copy(clouds[3])
    broken.fields = [f for f in broken.fields if f.name != "z"]
    pipeline.remember_sweep(broken)
    pipeline.remember_sweep(clouds[1])                          # older than the newest kept
    assert pipeline.sweeps.counters.skipped_not_kept == 2
    assert [h.stamp_ns for h in pipeline.sweeps.history] == kept


def test_a_pose_recorded_just_after_its_cloud_still_gives_multi_sweep_frames(drive, tmp_path):
    """Offline reading waits for the pose in bag time as the node waits in wall time: the
    same frames (points and images) as from the bag whose /tf precedes each cloud."""
    cfg = load_config("tiny", overrides=SMALL + SWEEPS)
    late = tf_after_clouds(drive.bag, tmp_path / "tf_late")
    frames = {}
    for name, bag in (("first", drive.bag), ("late", late)):
        pipeline = FramePipeline(cfg.node, input_hw=(192, 352), lidar=cfg.model.lidar)
        frames[name] = []
        feed_bag(bag, pipeline, lambda c: frames[name].append(pipeline.assemble(c).arrays))  # noqa: B023
        assert pipeline.sweeps.counters.frames_without_pose == 0, name
    assert len(frames["late"]) == len(frames["first"]) == 6
    for a, b in zip(frames["first"], frames["late"]):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.images, b.images)
    assert len(np.unique(frames["late"][-1].points[:, 4])) == 3     # current + 2 past sweeps


@pytest.mark.parametrize("ego_motion", [False, True])
def test_lidar2img_takes_the_ego_motion_between_sweep_and_image_when_the_model_asks(ego_motion):
    """CMT's nuScenes infos give each camera its own ego pose: with ``camera_ego_motion`` a
    camera that fired 40 ms after the sweep, the ego driving 10 m/s along x, projects the
    LiDAR frame shifted back 0.4 m; without it, the static extrinsics."""
    from aqr_perception.data import rosbag_msgs as M
    from aqr_perception.data.rig import nuscenes_like_rig

    cfg = load_config("tiny", [f"model.image.camera_ego_motion={str(ego_motion).lower()}"])
    assert cfg.model.lidar.sweeps > 1                      # the /tf ego pose is read
    rig = nuscenes_like_rig(352, 192)
    pipeline = FramePipeline(cfg.node, input_hw=(192, 352), lidar=cfg.model.lidar, image=cfg.model.image)
    pipeline.on_tf_static(M.tf_message([M.transform_stamped(0, "base_link", "LIDAR_TOP", np.eye(4))]
                                       + [M.transform_stamped(0, "LIDAR_TOP", c.name, np.linalg.inv(c.lidar_to_camera))
                                          for c in rig]))
    for t in (0.9, 1.0, 1.1):
        ego = _pose(0.0, [10.0 * t, 0, 0])
        pipeline.on_tf(M.tf_message([M.transform_stamped(int(t * NS), "map", "base_link", ego)]))
    t_lidar, t_cam = NS, NS + 40_000_000
    for c in rig:
        pipeline.on_camera_info(c.name, M.camera_info(t_cam, c.name, c.K, 352, 192))
        pipeline.on_image(c.name, M.compressed_image(t_cam, c.name, np.zeros((192, 352, 3), np.uint8)))
    pts = np.random.default_rng(0).normal(0, 10, (500, 4)).astype(np.float32)
    arrays = pipeline.assemble(M.pointcloud2(t_lidar, "LIDAR_TOP", pts)).arrays
    shift = np.eye(4)
    shift[0, 3] = -0.4 if ego_motion else 0.0                # LiDAR(t_lidar) in the ego frame of t_cam
    for v, c in enumerate(rig):
        k4 = np.eye(4)
        k4[:3, :3] = c.K
        want = k4 @ c.lidar_to_camera @ shift
        assert arrays.camera_valid[v]
        np.testing.assert_allclose(arrays.lidar2img[v], want, rtol=1e-5, atol=1e-4)
    assert pipeline.ego_motion_fallbacks == 0
