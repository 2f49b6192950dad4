"""A synthetic drive written as a nuScenes-format dataset loads in the devkit's own
``NuScenes`` class (the independent check of the format), and what the devkit reads back
is the drive: the same points, JPEG bytes and ground truth as the drive's bag, and
calibrations that project boxes where the bag's rig does."""
import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from aqr_perception.config import load_config
from aqr_perception.data.ground_truth import read_ground_truth
from aqr_perception.data.nuscenes_export import LIDAR_CHANNEL, export_nuscenes
from aqr_perception.data.synth.drive import generate_drive
from aqr_perception.data.typestore import project_typestore
from aqr_perception.frames.conversions import read_points_numpy
from aqr_perception.stamps import header_ns

SCENE = "scene-0103"          # a scene name of the devkit's mini_val split
SEED = 21
#: nuScenes' sensor layout: LIDAR_TOP yawed -90 deg on the vehicle, and an ego that turns,
#: so that a frame mistake anywhere shows
NUSCENES_LAYOUT = ["synth.lidar_mount_yaw_deg=-90", "synth.ego_yaw_rate=0.3"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from nuscenes.nuscenes import NuScenes

    cfg = load_config("tiny", overrides=["synth.frames_per_drive=11", "synth.lidar_azimuth_steps=360",
                                         *NUSCENES_LAYOUT])
    root = tmp_path_factory.mktemp("nuscenes")
    scenes = export_nuscenes(cfg, root / "data", {SCENE: SEED})
    drive = generate_drive(cfg, root / "bags", "drive", SEED)
    return cfg, NuScenes(version="v1.0-mini", dataroot=str(root / "data"), verbose=False), scenes[0], drive


def _bag_messages(bag, msgtype: str) -> dict:
    """(topic, stamp in µs: nuScenes' unit) -> message."""
    store = project_typestore()
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.msgtype == msgtype]
        return {(c.topic, header_ns(m) // 1000): m for c, _, raw in reader.messages(connections=conns)
                for m in [store.deserialize_cdr(raw, c.msgtype)]}


def test_the_devkit_loads_key_frames_with_all_channels_and_every_sweep(exported):
    cfg, nusc, scene, drive = exported
    assert [s["name"] for s in nusc.scene] == [SCENE]
    assert len(nusc.sample) == 3 == len(scene.samples)               # 0, 0.25, 0.5 s of an 11-sweep drive
    channels = {LIDAR_CHANNEL, *cfg.node.camera_names}
    for sample in nusc.sample:
        assert set(sample["data"]) == channels
        stamps = {nusc.get("sample_data", t)["timestamp"] for t in sample["data"].values()}
        assert stamps == {sample["timestamp"]}                       # all seven at the key frame's instant
    lidar = [sd for sd in nusc.sample_data if sd["channel"] == LIDAR_CHANNEL]
    assert len(lidar) == scene.sweeps == drive.lidar_frames == 11
    first = next(sd for sd in lidar if not sd["prev"])
    chain = [first]
    while chain[-1]["next"]:
        chain.append(nusc.get("sample_data", chain[-1]["next"]))
    assert len(chain) == 11 and [sd["timestamp"] for sd in chain] == sorted(sd["timestamp"] for sd in lidar)
    # nuScenes' layout: LIDAR_TOP's x axis points to the vehicle's right; the ego turns
    from pyquaternion import Quaternion

    mount = Quaternion(nusc.get("calibrated_sensor", first["calibrated_sensor_token"])["rotation"])
    np.testing.assert_allclose(mount.rotate([1.0, 0.0, 0.0]), [0.0, -1.0, 0.0], atol=1e-9)
    headings = [Quaternion(nusc.get("ego_pose", sd["ego_pose_token"])["rotation"]).yaw_pitch_roll[0] for sd in chain]
    assert headings[-1] - headings[0] == pytest.approx(0.3 * 0.5, abs=1e-6)       # 0.3 rad/s over 0.5 s


def test_points_and_jpegs_are_the_bags(exported):
    from nuscenes.utils.data_classes import LidarPointCloud

    cfg, nusc, _, drive = exported
    clouds = _bag_messages(drive.bag, "sensor_msgs/msg/PointCloud2")
    images = _bag_messages(drive.bag, "sensor_msgs/msg/CompressedImage")
    for sd in nusc.sample_data:
        stamp = sd["timestamp"]
        if sd["channel"] == LIDAR_CHANNEL:
            pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"])).points.T    # (P, 4)
            cloud = clouds[(cfg.node.lidar_topic, stamp)]
            np.testing.assert_array_equal(pc, read_points_numpy(cloud, ["x", "y", "z", "intensity"]))
        else:
            topic = cfg.node.image_topic_format.format(camera=sd["channel"])
            with open(nusc.get_sample_data_path(sd["token"]), "rb") as f:
                assert f.read() == bytes(images[(topic, stamp)].data)


def test_annotations_are_the_drive_ground_truth(exported):
    from nuscenes.eval.detection.utils import category_to_detection_name

    cfg, nusc, _, drive = exported
    gt = read_ground_truth(drive.gt_json, list(cfg.model.classes))
    for sample in nusc.sample:
        frame = gt[sample["timestamp"] * 1000]
        anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
        assert len(anns) == len(frame.names) > 0
        for ann, box, name, npts in zip(anns, frame.global_boxes, frame.names, frame.num_lidar_pts):
            b = nusc.get_box(ann["token"])
            np.testing.assert_allclose(b.center, box[:3], atol=1e-6)
            np.testing.assert_allclose(b.wlh, [box[4], box[3], box[5]], atol=1e-6)
            assert abs(np.angle(np.exp(1j * (b.orientation.yaw_pitch_roll[0] - box[6])))) < 1e-6
            assert category_to_detection_name(ann["category_name"]) == name and ann["num_lidar_pts"] == npts


def test_camera_calibration_projects_boxes_where_the_bags_rig_does(exported):
    """The devkit moves a global box into a camera (ego pose, calibrated_sensor) and
    projects it with camera_intrinsic; the bag's rig does it with /tf_static and CameraInfo."""
    from nuscenes.utils.geometry_utils import view_points

    cfg, nusc, _, drive = exported
    infos = _bag_messages(drive.bag, "sensor_msgs/msg/CameraInfo")
    gt = read_ground_truth(drive.gt_json, list(cfg.model.classes))
    from aqr_perception.data.synth.drive import drive_cameras

    rig = {c.name: c for c in drive_cameras(cfg)}
    sample = nusc.sample[1]
    frame = gt[sample["timestamp"] * 1000]
    index = {t: i for i, t in enumerate(sample["anns"])}            # annotations in the drive's GT order
    checked = 0
    for cam in cfg.node.camera_names:
        _, boxes, K = nusc.get_sample_data(sample["data"][cam])     # the boxes it sees, in its frame
        info = infos[(cfg.node.camera_info_topic_format.format(camera=cam), sample["timestamp"])]
        np.testing.assert_allclose(K, np.asarray(info.k).reshape(3, 3))
        in_cam = (rig[cam].lidar_to_camera @ np.c_[frame.lidar_boxes[:, :3], np.ones(len(frame.names))].T).T[:, :3]
        for box in boxes:
            p = in_cam[index[box.token]]
            np.testing.assert_allclose(box.center, p, atol=1e-4)
            if p[2] > 1.0:
                np.testing.assert_allclose(view_points(box.center[:, None], K, normalize=True)[:2, 0],
                                           (K @ (p / p[2]))[:2], atol=1e-3)
                checked += 1
    assert checked > 5


def test_the_synth_command_writes_a_dataset_the_devkit_loads(tmp_path):
    """The command a user types: ``aqr-perception synth --format nuscenes``."""
    from cli_helpers import run_cli
    from nuscenes.nuscenes import NuScenes

    out = run_cli("synth", "--format", "nuscenes", "--drives", "2", "--frames", "6", "--seed", "40",
                  "--set", "synth.lidar_azimuth_steps=180", "--out", str(tmp_path / "nuscenes"), "--quiet",
                  timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    nusc = NuScenes(version="v1.0-mini", dataroot=str(tmp_path / "nuscenes"), verbose=False)
    assert sorted(s["name"] for s in nusc.scene) == ["scene-0040", "scene-0041"]
    assert len(nusc.sample) == 4 and all(len(s["anns"]) > 0 for s in nusc.sample)    # 0 and 0.25 s per scene
