"""The one reader of a drive's ``.gt.json``: LiDAR-frame and global boxes agree through the
ego pose, sizes come out as (length, width, height), and the quaternion helper matches scipy."""
import numpy as np
from scipy.spatial.transform import Rotation

from aqr_perception.config import NUSCENES_CLASSES
from aqr_perception.data.boxes import quaternion_to_yaw, transform_boxes, yaw_to_quaternion
from aqr_perception.data.ground_truth import read_ground_truth
from aqr_perception.model.runtime import PACKAGE_RESOURCES

GT = PACKAGE_RESOURCES / "default_drive.gt.json"


def test_lidar_and_global_boxes_are_the_same_boxes():
    frames = read_ground_truth(GT, list(NUSCENES_CLASSES))
    assert frames and sum(len(f.names) for f in frames.values()) > 20
    for f in frames.values():
        moved = transform_boxes(f.lidar_boxes, f.lidar_to_global)
        np.testing.assert_allclose(moved[:, :6], f.global_boxes[:, :6], atol=1e-4)
        dyaw = np.angle(np.exp(1j * (moved[:, 6] - f.global_boxes[:, 6])))
        assert np.abs(dyaw).max(initial=0.0) < 1e-4
        assert [NUSCENES_CLASSES[i] for i in f.labels] == f.names
        # a car is longer than wide: dx (along the heading) is the length
        cars = np.array(f.names) == "car"
        assert np.all(f.lidar_boxes[cars, 3] > f.lidar_boxes[cars, 4])


def test_quaternion_helpers_match_scipy():
    rng = np.random.default_rng(0)
    yaw = rng.uniform(-np.pi, np.pi, 50)
    q = yaw_to_quaternion(yaw)
    np.testing.assert_allclose(Rotation.from_quat(q).as_euler("zyx")[:, 0], yaw, atol=1e-12)
    # a general rotation: the heading of its x axis in the ground plane
    rot = Rotation.from_euler("zyx", np.column_stack([yaw, rng.uniform(-0.3, 0.3, (50, 2))]))
    x_axis = rot.apply([1.0, 0.0, 0.0])
    np.testing.assert_allclose(quaternion_to_yaw(rot.as_quat()), np.arctan2(x_axis[:, 1], x_axis[:, 0]), atol=1e-12)
