"""LiDAR-triggered association: nearest image in the window, offsets, stale cameras,
time jumps, and counters that account for every image."""
import pytest

from aqr_perception.config import SyncConfig
from aqr_perception.frames.calibration import CalibrationStore
from aqr_perception.frames.sync import LidarTriggeredSync
from aqr_perception.frames.transforms import StaticTransforms

MS = 1_000_000
CAMS = ["front", "back"]


def _sync(**kw):
    return LidarTriggeredSync(CAMS, SyncConfig(**{"max_image_age_s": 0.05, "image_buffer_size": 4, **kw}))


def test_nearest_image_within_window_either_side():
    s = _sync()
    for t in (0, 83, 166):
        s.add_image("front", t * MS, f"f{t}")
    s.add_image("back", 140 * MS, "b140")
    a = s.associate(100 * MS)
    assert a.images["front"] == "f83"                       # 17 ms before beats 66 ms after
    assert a.images["back"] == "b140"                       # 40 ms *after* the cloud is fine
    a = s.associate(200 * MS)
    assert a.images["front"] == "f166" and a.images["back"] is None
    assert "+0.060" in a.stale["back"] or "-0.060" in a.stale["back"]


def test_per_camera_offsets_shift_the_stamps():
    s = _sync(camera_time_offsets_s=[-0.15, 0.0])
    s.add_image("front", 250 * MS, "late-stamped")          # the driver stamps 150 ms late
    s.add_image("back", 100 * MS, "b")
    a = s.associate(100 * MS)
    assert a.images == {"front": "late-stamped", "back": "b"}
    with pytest.raises(ValueError, match="offsets"):
        LidarTriggeredSync(CAMS, SyncConfig(camera_time_offsets_s=[0.1]))


def test_camera_without_images_is_stale_with_reason():
    s = _sync()
    s.add_image("front", 0, "f")
    a = s.associate(0)
    assert a.fresh_cameras == ["front"]
    assert a.stale == {"back": "no image received yet"}
    assert s.counters.stale_per_camera == {"front": 0, "back": 1}


def test_time_jump_back_resets_and_counts():
    s = _sync(time_jump_back_s=1.0)
    s.add_image("front", 10_000 * MS, "old")
    s.associate(10_000 * MS)
    s.add_image("front", 10_050 * MS, "old2")               # never used
    s.add_image("front", 200 * MS, "new")                   # the bag looped: the camera's clock first
    assert s.counters.camera_time_jumps == {"front": 1, "back": 0} and s.counters.time_jumps == 0
    a = s.associate(200 * MS)                               # ...then the LiDAR's
    assert s.counters.time_jumps == 1
    assert a.images["front"] == "new"                       # an image of the new run, before its cloud, stays
    assert s.counters.images_evicted_unused["front"] == 1   # "old2" went unused
    s.associate(150 * MS)                                   # small step back: out of order, no reset
    assert s.counters.clouds_out_of_order == 1 and s.counters.time_jumps == 1


def test_counters_account_for_every_image():
    s = _sync(image_buffer_size=2)
    for t in range(10):
        s.add_image("front", t * 100 * MS, t)
        if t % 3 == 0:
            s.associate(t * 100 * MS)
    s.add_image("front", 900 * MS, "duplicate stamp")       # dropped, counted
    c = s.counters
    buffered = 2
    used_still_buffered = 1                                  # t=9 is used and still in the buffer
    assert c.images_received["front"] == 11
    assert c.images_used["front"] == 4
    assert c.images_received["front"] == (c.images_used["front"] + c.images_evicted_unused["front"]
                                          + buffered - used_still_buffered)


def test_static_transform_chain_lookup():
    import numpy as np

    tf = StaticTransforms()
    base_lidar = np.eye(4)
    base_lidar[:3, 3] = [0.9, 0.0, 1.8]
    # camera looking along lidar +x: camera axes (right, down, forward) = (-y, -z, +x)
    lidar_cam = np.linalg.inv(np.array([[0, 0, 1, 0.5], [-1, 0, 0, 0.1], [0, -1, 0, -0.3], [0, 0, 0, 1.0]]))
    tf.add("base_link", "lidar", base_lidar)                # child -> parent
    tf.add("lidar", "cam", np.linalg.inv(lidar_cam))
    p_lidar = np.array([10.0, 2.0, -1.0, 1.0])
    np.testing.assert_allclose(tf.lookup("cam", "lidar") @ p_lidar, lidar_cam @ p_lidar)
    np.testing.assert_allclose(tf.lookup("cam", "base_link") @ (base_lidar @ p_lidar), lidar_cam @ p_lidar)
    assert tf.lookup("cam", "nowhere") is None


def test_a_frame_given_a_new_parent_uses_it_as_tf2_does():
    """tf2 keeps one parent per frame: a corrected calibration that re-roots the camera under
    base_link replaces its old lidar -> cam edge. Before, both edges stayed and the shorter,
    stale one was used, without a word."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    def rigid(rotvec, t):
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = Rotation.from_rotvec(rotvec).as_matrix(), t
        return T

    tf = StaticTransforms()
    tf.add("lidar", "cam", rigid([0.1, -1.5, 0.0], [0.5, 0.1, -0.3]))         # the first calibration
    lidar_to_base = rigid([0.0, 0.0, 0.02], [0.9, 0.0, 1.8])
    cam_to_base = rigid([0.12, -1.48, 0.01], [1.8, 0.5, 1.5])                 # the corrected one: 0.4 m away
    tf.add("base_link", "lidar", lidar_to_base)
    tf.add("base_link", "cam", cam_to_base)
    p_lidar = np.array([10.0, 2.0, -1.0, 1.0])
    expected = np.linalg.inv(cam_to_base) @ lidar_to_base @ p_lidar             # lidar -> base_link -> cam
    np.testing.assert_allclose(tf.lookup("cam", "lidar") @ p_lidar, expected, atol=1e-9)
    assert tf.frames == {"base_link", "lidar", "cam"}


def test_calibration_store_names_what_is_missing():
    from sensor_msgs.msg import CameraInfo

    store = CalibrationStore(CAMS, "tf_static")
    info = CameraInfo(width=10, height=10)
    info.header.frame_id = "front_optical"
    info.k = [5.0, 0, 5, 0, 5.0, 5, 0, 0, 1]
    store.set_camera_info("front", info)
    missing = store.missing("lidar")
    assert missing["back"] == "no CameraInfo received"
    assert "no /tf_static path lidar -> front_optical" in missing["front"]



def test_in_flight_and_live_cameras():
    s = _sync()                                                # 50 ms window
    assert s.cameras_in_flight(100 * MS) == [] and s.live_cameras(100 * MS) == []   # nothing yet: down
    s.add_image("front", 80 * MS, "f80")                       # older than the cloud, inside the window
    s.add_image("back", 10 * MS, "b10")                        # 90 ms old: down
    assert s.cameras_in_flight(100 * MS) == ["front"] and s.live_cameras(100 * MS) == ["front"]
    s.add_image("back", 120 * MS, "b120")                      # a later image: live, nothing to wait for
    s.add_image("front", 100 * MS, "f100")                     # its image of this instant arrived
    assert s.cameras_in_flight(100 * MS) == [] and s.live_cameras(100 * MS) == ["front", "back"]
    s2 = _sync(camera_time_offsets_s=[0.03, 0.0])              # offsets count: 80 + 30 > 100
    s2.add_image("front", 80 * MS, "f80")
    assert s2.cameras_in_flight(100 * MS) == []


def test_a_camera_with_a_skewed_clock_is_masked_alone():
    """A camera 2 s behind (or ahead of) the others resets nothing: it alone is stale, the
    reason says by how much; the documented per-camera offset brings it back."""
    cams = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
    for skew_s in (-2.0, 2.0):
        for offsets in ([], [0.0, 0.0, 0.0, -skew_s, 0.0, 0.0]):
            s = LidarTriggeredSync(cams, SyncConfig(max_image_age_s=0.05, time_jump_back_s=1.0,
                                                    camera_time_offsets_s=offsets))
            for k in range(6):
                t = 1000 * MS + k * 100 * MS
                for c in cams:
                    s.add_image(c, t + (int(skew_s * 1000) * MS if c == "CAM_BACK" else 0), f"{c}{k}")
                a = s.associate(t)
                if offsets:
                    assert a.fresh_cameras == cams and a.images["CAM_BACK"] == f"CAM_BACK{k}"
                else:
                    assert a.fresh_cameras == [c for c in cams if c != "CAM_BACK"], (skew_s, k, a.stale)
                    gap = float(a.stale["CAM_BACK"].split("nearest image ")[1].split(" s")[0])
                    assert 1.5 < gap * skew_s / abs(skew_s) <= 2.0, a.stale["CAM_BACK"]
            assert s.counters.time_jumps == 0 and sum(s.counters.camera_time_jumps.values()) == 0
