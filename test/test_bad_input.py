"""Bad input never kills the pipeline: every broken message gives a clear outcome or a
masked camera with a reason; model faults skip the frame; nothing is built from corrupt data."""
import math

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from aqr_perception.config import NodeConfig, SyncConfig
from aqr_perception.data import rosbag_msgs as M
from aqr_perception.data.rig import nuscenes_like_rig
from aqr_perception.detections import FrameDetections
from aqr_perception.frames.conversions import ConversionError, camera_info_K, imgmsg_to_cv2, pointcloud2_to_xyzi
from aqr_perception.frames.pipeline import FramePipeline
from aqr_perception.frames.sync import LidarTriggeredSync
from aqr_perception.model.runtime import ModelOutputError, Prediction

W, H = 64, 32
NS = 1_000_000_000


class StubRuntime:
    """Stands in for the detector: records what it was given, can fail on demand."""

    input_hw = (32, 64)

    def __init__(self, fail: Exception | None = None):
        self.fail = fail
        self.calls = []
        self.released = 0

    def infer(self, arrays):
        if self.fail is not None:
            raise self.fail
        self.calls.append(arrays)
        n = 3
        det = FrameDetections(np.zeros((n, 9)), np.array([0.9, 0.5, 0.1]), np.zeros(n, int), np.arange(n),
                              np.full((n, 1), 0.7), np.full((n, 1), 0.6))
        return Prediction(det, True, 1.0)

    def release_memory(self):
        self.released += 1


def _header(t_ns, frame):
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = t_ns // NS, t_ns % NS
    return h


def _cloud(n=100, t_ns=NS):
    pts = np.random.default_rng(0).normal(0, 10, (n, 4)).astype(np.float32)
    from rclpy.serialization import deserialize_message

    from aqr_perception.data.typestore import project_typestore

    raw = project_typestore().serialize_cdr(M.pointcloud2(t_ns, "lidar", pts), "sensor_msgs/msg/PointCloud2")
    return deserialize_message(bytes(raw), PointCloud2)


def _info(cam, K):
    info = CameraInfo(header=_header(0, cam), width=W, height=H)
    info.k = [float(v) for v in K.reshape(-1)]
    return info


def _info_sized(cam, h, w):
    """A plausible CameraInfo for an h x w image (f = w / 2, principal point at the centre)."""
    info = CameraInfo(header=_header(0, cam), width=w, height=h)
    info.k = [w / 2, 0.0, w / 2, 0.0, w / 2, h / 2, 0.0, 0.0, 1.0]
    return info


def _compressed_msg(data: bytes, fmt: str = "jpeg", t_ns: int = NS, cam: str = "cam"):
    return CompressedImage(header=_header(t_ns, cam), format=fmt, data=data)


def _image(cam, t_ns, rgb=None):
    rgb = np.full((H, W, 3), 100, np.uint8) if rgb is None else rgb
    return Image(header=_header(t_ns, cam), height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                 step=rgb.shape[1] * 3, data=rgb.tobytes())


def _tf_static(cams):
    from geometry_msgs.msg import TransformStamped
    from scipy.spatial.transform import Rotation
    from tf2_msgs.msg import TFMessage

    msg = TFMessage()
    for c in cams:
        T = np.linalg.inv(c.lidar_to_camera)
        t = TransformStamped(child_frame_id=c.name)
        t.header.frame_id = "lidar"
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (float(v) for v in T[:3, 3])
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = q
        msg.transforms.append(t)
    return msg


def _pipeline(runtime=None, lidar=None, tf_static=True, cameras_info_except=None, transport="raw", node=None,
              **sync):
    cams = [c for c in nuscenes_like_rig(W, H)]
    cfg = NodeConfig(camera_names=[c.name for c in cams], image_transport=transport, score_threshold=0.3,
                     sync=SyncConfig(**{"calibration_wait_s": 0.0, **sync}), **(node or {}))
    p = FramePipeline(cfg, runtime or StubRuntime(), lidar=lidar)
    for c in cams:
        if c.name != cameras_info_except:
            p.on_camera_info(c.name, _info(c.name, c.K))
    if tf_static:
        p.on_tf_static(_tf_static(cams))
    return p, cams


def test_clean_frame_runs_and_filters_by_score():
    p, cams = _pipeline()
    for c in cams:
        p.on_image(c.name, _image(c.name, NS))
    out = p.process(_cloud())
    assert out.status == "ok" and out.inputs.masked == {}
    assert list(out.detections.scores) == [0.9, 0.5]          # 0.1 < score_threshold


@pytest.mark.parametrize("breakage, words", [
    (lambda c: setattr(c, "fields", [f for f in c.fields if f.name != "y"]), "no 'y' field"),
    (lambda c: setattr(c.fields[0], "datatype", 99), "unknown datatype"),
    (lambda c: setattr(c, "point_step", 6), "does not fit point_step"),
    (lambda c: setattr(c, "width", c.width + 50), "bytes"),
])
def test_broken_cloud_skips_the_frame_with_a_reason(breakage, words):
    runtime = StubRuntime()
    p, cams = _pipeline(runtime)
    cloud = _cloud()
    breakage(cloud)
    out = p.process(cloud)
    assert out.status == "invalid_cloud" and words in out.message
    assert runtime.calls == []                                 # nothing reached the model


def test_absurdly_large_cloud_is_refused_before_decoding():
    """10 M real points (160 MB): refused by the size cap; below the cap the same cloud decodes."""
    import time

    runtime = StubRuntime()
    p, _ = _pipeline(runtime)
    n = 10_000_000
    cloud = _cloud(n=10)
    cloud.width, cloud.row_step = n, n * cloud.point_step
    cloud.data = np.zeros(n * cloud.point_step, np.uint8).tobytes()
    t = time.monotonic()
    out = p.process(cloud)
    assert out.status == "invalid_cloud" and "10000000 points" in out.message and "max_points" in out.message
    assert time.monotonic() - t < 1.0 and runtime.calls == []
    assert pointcloud2_to_xyzi(cloud, max_points=n).shape == (n, 4)


def test_nan_points_dropped_and_empty_cloud_masks_lidar():
    runtime = StubRuntime()
    p, _ = _pipeline(runtime)
    cloud = _cloud(n=10)
    data = bytearray(cloud.data)
    data[0:4] = np.float32(np.nan).tobytes()
    data[16 + 4:16 + 8] = np.float32(np.inf).tobytes()
    cloud.data = bytes(data)
    out = p.process(cloud)
    assert out.inputs.arrays.points.shape == (8, 4) and out.inputs.arrays.lidar_valid
    out = p.process(_cloud(n=0, t_ns=2 * NS))
    assert out.status == "ok" and not out.inputs.arrays.lidar_valid


@pytest.mark.parametrize("breakage, words", [
    (lambda m: setattr(m, "encoding", "32FC1"), "unsupported image encoding"),
    (lambda m: setattr(m, "step", 10), "step"),
    (lambda m: setattr(m, "data", bytes(m.data)[:100]), "bytes"),
])
def test_broken_image_masks_only_that_camera(breakage, words):
    p, cams = _pipeline()
    for i, c in enumerate(cams):
        msg = _image(c.name, NS)
        if i == 2:
            breakage(msg)
        p.on_image(c.name, msg)
    out = p.process(_cloud())
    assert out.status == "ok"
    assert list(out.inputs.masked) == [cams[2].name] and words in out.inputs.masked[cams[2].name]
    assert out.inputs.arrays.camera_valid.tolist() == [True, True, False, True, True, True]


def test_image_size_different_from_camera_info_is_masked():
    p, cams = _pipeline()
    for c in cams:
        p.on_image(c.name, _image(c.name, NS, np.zeros((H * 2, W * 2, 3), np.uint8) if c is cams[0] else None))
    out = p.process(_cloud())
    assert "CameraInfo says 64x32" in out.inputs.masked[cams[0].name]


def test_invalid_compressed_image_masks_camera():
    p, cams = _pipeline()
    p.cfg = p.cfg.model_copy(update={"image_transport": "compressed"})
    for c in cams:
        p.on_image(c.name, CompressedImage(header=_header(NS, c.name), format="jpeg", data=b"\x00garbage"))
    out = p.process(_cloud())
    assert all("neither JPEG nor PNG" in r for r in out.inputs.masked.values()) and len(out.inputs.masked) == 6


def damaged_jpeg(h: int = H, w: int = W) -> bytes:
    """An h x w JPEG whose entropy-coded middle is overwritten: libjpeg decodes it with a
    "Corrupt JPEG data" warning (OpenCV prints it to stderr and returns the image)."""
    rgb = np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    data[len(data) // 2: len(data) // 2 + 32] = b"\xaa" * 32
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR) is not None
    return bytes(data)


def test_a_damaged_jpeg_is_used_and_its_decoder_warning_reported():
    p, cams = _pipeline(transport="compressed")
    good = cv2.imencode(".jpg", np.full((H, W, 3), 90, np.uint8))[1].tobytes()
    for c in cams:
        p.on_image(c.name, _compressed_msg(damaged_jpeg() if c is cams[2] else good, t_ns=NS, cam=c.name))
    out = p.process(_cloud())
    assert out.status == "ok" and out.inputs.masked == {}
    assert list(out.inputs.image_warnings) == [cams[2].name]
    assert out.inputs.image_warnings[cams[2].name].startswith("JPEG decoder warning: Corrupt JPEG data")


@pytest.mark.parametrize("k", [[0.0] * 9, [math.nan] * 9, [-5.0, 0, 1, 0, 5.0, 1, 0, 0, 1]])
def test_bad_camera_info_is_rejected_and_camera_stays_uncalibrated(k):
    cams = nuscenes_like_rig(W, H)
    p, _ = _pipeline()
    info = _info(cams[0].name, cams[0].K)
    info.k = k
    with pytest.raises(ConversionError):
        p.on_camera_info("new_cam", info)


def test_missing_tf_static_masks_cameras_with_reason():
    cams = nuscenes_like_rig(W, H)
    cfg = NodeConfig(camera_names=[c.name for c in cams], image_transport="raw",
                     sync=SyncConfig(calibration_wait_s=0.0))
    p = FramePipeline(cfg, StubRuntime())
    for c in cams:
        p.on_camera_info(c.name, _info(c.name, c.K))
        p.on_image(c.name, _image(c.name, NS))
    out = p.process(_cloud())
    assert out.status == "ok" and len(out.inputs.masked) == 6
    assert all("no /tf_static path lidar ->" in r for r in out.inputs.masked.values())


def test_model_faults_skip_the_frame():
    for fault in (ModelOutputError("non-finite detector outputs"), RuntimeError("CUDA out of memory. Tried...")):
        runtime = StubRuntime(fault)
        p, cams = _pipeline(runtime)
        out = p.process(_cloud())
        assert out.status == "model_error" and out.detections is None
        assert runtime.released == (1 if "out of memory" in str(fault) else 0)


def test_future_and_out_of_order_stamps_are_counted_not_fatal():
    s = LidarTriggeredSync(["a"], SyncConfig(max_image_age_s=0.05))
    s.add_image("a", 100 * NS, "future")                    # far ahead of the clouds: stale, not a reset
    a = s.associate(1 * NS)
    assert s.counters.time_jumps == 0 and a.images["a"] is None and "+99.000 s" in a.stale["a"]
    s.associate(2 * NS)
    s.associate(int(1.5 * NS))
    assert s.counters.clouds_out_of_order == 1


# ------------------------------------------------------------------ property-based fuzzing
numeric_types = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 255])


@st.composite
def random_clouds(draw):
    names = draw(st.lists(st.sampled_from(["x", "y", "z", "intensity", "ring", "t", ""]), max_size=6))
    fields = [PointField(name=n, offset=draw(st.integers(0, 40)), datatype=draw(numeric_types), count=1)
              for n in names]
    cloud = PointCloud2(height=draw(st.integers(0, 4)), width=draw(st.integers(0, 50)), fields=fields,
                        is_bigendian=draw(st.booleans()), point_step=draw(st.integers(0, 48)),
                        row_step=draw(st.integers(0, 2000)), is_dense=draw(st.booleans()))
    cloud.data = draw(st.binary(max_size=4000))
    return cloud


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_clouds())
def test_fuzz_pointcloud2_conversion_raises_only_conversion_errors(cloud):
    try:
        pts = pointcloud2_to_xyzi(cloud)
    except ConversionError:
        return
    assert pts.ndim == 2 and pts.shape[1] == 4 and np.isfinite(pts).all()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["rgb8", "bgr8", "mono8", "rgba8", "16UC1", "", "bayer_rggb8", "bayer_grbg8", "yuv422",
                        "yuv422_yuy2"]), st.integers(0, 20),
       st.integers(0, 20), st.integers(0, 80), st.binary(max_size=2000))
def test_fuzz_image_conversion_raises_only_conversion_errors(encoding, h, w, step, data):
    msg = Image(height=h, width=w, encoding=encoding, step=step, data=data)
    try:
        img = imgmsg_to_cv2(msg, "rgb8")
    except ConversionError:
        return
    assert img.shape == (h, w, 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=9, max_size=9),
       st.integers(-5, 5000), st.integers(-5, 5000))
def test_fuzz_camera_info(k, width, height):
    info = CameraInfo(width=max(width, 0), height=max(height, 0))
    info.k = k
    try:
        K = camera_info_K(info)
    except ConversionError:
        return
    assert np.isfinite(K).all() and K[0, 0] > 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["img", "cloud"]), st.integers(0, 3), st.integers(-10**12, 10**12)),
                max_size=60))
def test_fuzz_sync_never_raises_and_counts_every_image(events):
    s = LidarTriggeredSync(["c0", "c1", "c2", "c3"], SyncConfig(image_buffer_size=3))
    n_images = 0
    for kind, cam, t in events:
        if kind == "img":
            s.add_image(f"c{cam}", t, t)
            n_images += 1
        else:
            a = s.associate(t)
            assert set(a.images) == {"c0", "c1", "c2", "c3"}
    assert sum(s.counters.images_received.values()) == n_images


# ------------------------------------------------------------------ transforms, one by one
def _transform(parent, child, q=(0.0, 0.0, 0.0, 1.0), t=(0.0, 0.0, 0.0), stamp_ns=0):
    from geometry_msgs.msg import TransformStamped

    tf = TransformStamped(child_frame_id=child)
    tf.header.frame_id = parent
    tf.header.stamp.sec, tf.header.stamp.nanosec = divmod(stamp_ns, NS)
    tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = t
    tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z, tf.transform.rotation.w = q
    return tf


@pytest.mark.parametrize("q", [(1e300, 0.0, 0.0, 1e300), (0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 2.0),
                               (float("nan"), 0.0, 0.0, 1.0)])
def test_one_degenerate_static_transform_is_rejected_alone(q):
    """robot_state_publisher sends every static frame in one message: an unrelated bad edge
    (base_link -> gps) is refused by name and the cameras' transforms after it are kept."""
    from tf2_msgs.msg import TFMessage

    p, cams = _pipeline(tf_static=False)
    msg = TFMessage(transforms=[_transform("lidar", "base_link"), _transform("base_link", "gps", q=q),
                                *_tf_static(cams).transforms])
    rejected = p.on_tf_static(msg)
    assert [(r.parent, r.child) for r in rejected] == [("base_link", "gps")]
    assert "quaternion" in rejected[0].reason or "non-finite" in rejected[0].reason
    for c in cams:
        p.on_image(c.name, _image(c.name, NS))
    out = p.process(_cloud())
    assert out.status == "ok" and out.inputs.masked == {}


def test_a_slightly_denormalised_quaternion_is_normalised():
    from tf2_msgs.msg import TFMessage

    from aqr_perception.frames.transforms import StaticTransforms

    s = 0.5 ** 0.5 * 1.004                                  # a driver's rounding: norm 1.004
    tf = StaticTransforms()
    assert tf.add_message(TFMessage(transforms=[_transform("a", "b", q=(0.0, 0.0, s, s), t=(1.0, 0.0, 0.0))])) == []
    T = tf.lookup("a", "b")
    np.testing.assert_allclose(T[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)   # 90 deg about z
    np.testing.assert_allclose(tf.lookup("b", "a") @ T, np.eye(4), atol=1e-12)


def test_an_unrelated_bad_dynamic_edge_does_not_stop_the_ego_pose():
    """A map -> wheel edge with an all-zero quaternion on /tf is refused; the LiDAR's pose
    in map still interpolates."""
    from tf2_msgs.msg import TFMessage

    from aqr_perception.frames.ego_pose import EgoPoses
    from aqr_perception.frames.transforms import StaticTransforms

    poses, static = EgoPoses(), StaticTransforms()
    static.add_message(TFMessage(transforms=[_transform("base_link", "lidar", t=(0.0, 0.0, 1.8))]))
    for k, x in ((0, 0.0), (1, 10.0)):
        rejected = poses.add_message(TFMessage(transforms=[
            _transform("map", "wheel", q=(0.0, 0.0, 0.0, 0.0), stamp_ns=k * NS),
            _transform("map", "base_link", t=(x, 0.0, 0.0), stamp_ns=k * NS)]))
        assert [str(r).split(":")[0] for r in rejected] == ["map -> wheel"]
    T = static.lookup("map", "lidar", poses.edges_at(NS // 2))
    np.testing.assert_allclose(T[:3, 3], [5.0, 0.0, 1.8])


def test_a_tf_sample_older_than_the_history_is_refused_by_name_not_dropped_silently():
    """tf2 ignores a sample older than its cache with a TF_OLD_DATA warning; here it is a
    rejected transform (the node counts ``tf_rejected.<edge>`` and logs it). Before, it was
    stored and pruned at once, in no counter. A late sample inside the history is used."""
    from tf2_msgs.msg import TFMessage

    from aqr_perception.frames.ego_pose import EgoPoses

    poses = EgoPoses(history_s=10.0)
    for k in range(21):                                       # 0 .. 20 s
        assert poses.add_message(TFMessage(transforms=[_transform("map", "base_link", t=(k, 0.0, 0.0),
                                                                  stamp_ns=k * NS)])) == []
    late = poses.add_message(TFMessage(transforms=[_transform("map", "base_link", t=(4.5, 0.0, 0.0),
                                                              stamp_ns=int(4.5 * NS))]))
    assert [str(r).split(":")[0] for r in late] == ["map -> base_link"] and "TF_OLD_DATA" in late[0].reason
    assert poses.add_message(TFMessage(transforms=[_transform("map", "base_link", t=(15.5, 0.0, 0.0),
                                                              stamp_ns=int(15.5 * NS))])) == []
    np.testing.assert_allclose(poses.edges_at(int(15.25 * NS))[("map", "base_link")][:3, 3], [15.25, 0.0, 0.0])
    assert poses.time_jumps == 0
    # older than every sample kept by more than the history: time went back (a looping bag)
    for k in range(21, 41):
        poses.add_message(TFMessage(transforms=[_transform("map", "base_link", t=(k, 0.0, 0.0), stamp_ns=k * NS)]))
    assert poses.add_message(TFMessage(transforms=[_transform("map", "base_link", stamp_ns=5 * NS)])) == []
    assert poses.time_jumps == 1 and poses.edges_at(int(35.5 * NS)) == {}


# ------------------------------------------------------------------ calibrations that pass a finite check
@pytest.mark.parametrize("edit, words", [
    (lambda K: K.__setitem__((0, 0), 1e-300), "implausible focal lengths"),
    (lambda K: K.__setitem__((0, 0), 1e300), "implausible focal lengths"),
    (lambda K: K.__setitem__((0, 2), 1e30), "principal point"),
    (lambda K: K.__setitem__((2, 2), -1.0), "not a pinhole matrix"),
])
def test_a_broken_calibration_masks_that_camera_alone_with_a_reason(edit, words):
    runtime = StubRuntime()
    p, cams = _pipeline(runtime)
    bad = cams[3]
    K = np.array(bad.K, dtype=np.float64)
    edit(K)
    for c in cams:
        p.on_image(c.name, _image(c.name, NS))
    with pytest.raises(ConversionError, match=words):
        p.on_camera_info(bad.name, _info(bad.name, K))      # after a good one: the good one stays
    assert p.process(_cloud()).inputs.masked == {}
    # a camera whose only CameraInfo was refused is masked alone, the reason says why
    p3, _ = _pipeline(runtime, cameras_info_except=bad.name)
    with pytest.raises(ConversionError):
        p3.on_camera_info(bad.name, _info(bad.name, K))
    for c in cams:
        p3.on_image(c.name, _image(c.name, NS))
    out = p3.process(_cloud())
    assert out.status == "ok" and list(out.inputs.masked) == [bad.name]
    assert out.inputs.masked[bad.name].startswith("CameraInfo refused:") and words in out.inputs.masked[bad.name]
    assert bool(out.inputs.arrays.camera_valid[3]) is False and out.inputs.arrays.camera_valid.sum() == 5
    assert np.all(np.isfinite(out.inputs.arrays.lidar2img))


# ------------------------------------------------------------------ decode bombs
@pytest.mark.parametrize("hw", [(900, 1600), (7, 13), (1, 4000), (20000, 3)])
@pytest.mark.parametrize("fmt", ["jpeg", "jpeg-progressive", "png", "png-grey"])
def test_compressed_size_from_the_header_matches_the_decoder(hw, fmt):
    import cv2

    from aqr_perception.frames.conversions import compressed_image_size

    img = np.random.default_rng(1).integers(0, 255, (*hw, 1 if fmt == "png-grey" else 3), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if fmt == "jpeg-progressive" else []
    data = cv2.imencode(".png" if fmt.startswith("png") else ".jpg", img, params)[1].tobytes()
    assert compressed_image_size(data) == cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _libjpeg_cases() -> dict[str, bytes]:
    """JPEGs whose marker layout a walk can get wrong, each decodable by libjpeg."""
    real = _jpeg(48, 64)
    fake_sof = b"\xff\xc0\x00\x11\x08" + (900).to_bytes(2, "big") + (1600).to_bytes(2, "big") + b"\x03" + bytes(9)
    return {
        # a stuffed zero between segments: libjpeg discards FF 00; read as a marker with a
        # length it hid a decoy frame header inside the next segment's payload
        "stuffed_zero_then_decoy": b"\xff\xd8\xff\x00" + _segment(0xE1, b"AB")
                                   + _segment(0xE2, fake_sof + bytes(1000)) + real[2:],
        "fill_bytes_before_markers": real[:2] + b"\xff" * 100 + real[2:],
        "scan_markers_in_a_comment": real[:2] + _segment(0xFE, b"\xff\xda" * 65) + real[2:],
        "a_trailer_after_the_end": real + np.random.default_rng(2).integers(0, 256, 5_000_000, np.uint8).tobytes(),
        "300_app_segments": real[:2] + _segment(0xE5, b"x" * 10) * 300 + real[2:],
        "restart_markers": _jpeg_rst(),
    }


def _jpeg_rst() -> bytes:
    import cv2

    rgb = np.random.default_rng(6).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes()


@pytest.mark.parametrize("case", ["stuffed_zero_then_decoy", "fill_bytes_before_markers", "scan_markers_in_a_comment",
                                  "a_trailer_after_the_end", "300_app_segments", "restart_markers"])
def test_the_jpeg_header_walk_reads_the_size_libjpeg_decodes(case):
    """Against the decoder itself: the size read from the markers is the decoded size."""
    import cv2

    from aqr_perception.frames.conversions import compressed_image_size

    data = _libjpeg_cases()[case]
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None and compressed_image_size(data) == decoded.shape[:2]


def _never_decode(monkeypatch):
    import aqr_perception.frames.conversions as conv

    def refuse(*_a, **_k):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(conv.cv2, "imdecode", refuse)


def test_a_png_bomb_is_refused_from_its_header(monkeypatch):
    """A 5000x5000 PNG of 25 kB (25 MP: under max_image_pixels) on a camera whose CameraInfo
    gives another size: refused from its header, that camera alone masked."""
    import cv2

    p, cams = _pipeline(transport="compressed")
    bomb = _compressed_msg(cv2.imencode(".png", np.zeros((5000, 5000), np.uint8))[1].tobytes(), "png")
    for c in cams:
        p.on_image(c.name, bomb if c is cams[2] else _compressed_msg(cv2.imencode(".jpg", np.zeros((H, W, 3),
                                                                                              np.uint8))[1].tobytes()))
    out = p.process(_cloud())
    assert list(out.inputs.masked) == [cams[2].name]
    assert "declares 5000x5000, CameraInfo says" in out.inputs.image_errors[cams[2].name]
    assert out.inputs.image_errors[cams[2].name].endswith("not decoded")


def test_images_beyond_max_image_pixels_or_of_absurd_shape_are_refused_before_decoding(monkeypatch):
    import cv2

    # a CameraInfo declaring the same huge size does not make it acceptable
    huge = (6000, 8000)
    p, cams = _pipeline(transport="compressed", node={"max_image_pixels": 40_000_000})
    p.on_camera_info(cams[0].name, _info_sized(cams[0].name, *huge))
    p.on_image(cams[0].name, _compressed_msg(cv2.imencode(".png", np.zeros(huge, np.uint8))[1].tobytes(), "png"))
    _never_decode(monkeypatch)
    out = p.process(_cloud())
    assert "48000000 pixels > max_image_pixels 40000000" in out.inputs.image_errors[cams[0].name]
    # a 4000x1 raw image with a matching CameraInfo: the covering resize would be 768000 wide
    p, cams = _pipeline()
    p.on_camera_info(cams[1].name, _info_sized(cams[1].name, 1, 4000))
    p.on_image(cams[1].name, _image(cams[1].name, NS, np.zeros((1, 4000, 3), np.uint8)))
    out = p.process(_cloud())
    assert "aspect ratio" in out.inputs.image_errors[cams[1].name]


def _jpeg(h=H, w=W, progressive=False) -> bytes:
    import cv2

    rgb = np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])[1].tobytes()


def _junk_before_frame_header(data: bytes, h: int, w: int) -> bytes:
    """The JPEG with one stray byte before its frame header (libjpeg skips it and decodes)
    and the header's size set to h x w."""
    d = bytearray(data)
    i = d.find(b"\xff\xc0")
    d[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    d[i:i] = b"\x00"
    return bytes(d)


def _webp(h: int, w: int) -> bytes:
    import cv2

    return cv2.imencode(".webp", np.zeros((h, w, 3), np.uint8))[1].tobytes()


def _scan_bomb() -> bytes:
    """A progressive JPEG whose last scan is repeated 1,000 times: each scan is a pass of the
    decoder over the image (10,000 took 3 s)."""
    data = _jpeg(progressive=True)
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * 1000 + b"\xff\xd9"


@pytest.mark.parametrize("payload, words", [
    (lambda: b"P5\n40000 40000\n255\n", "neither JPEG nor PNG"),          # cv2.error out of imdecode before
    (lambda: _webp(H, W), "neither JPEG nor PNG"),                           # decoded whole before any check
    (lambda: _junk_before_frame_header(_jpeg(), 12000, 12000), "pixels > max_image_pixels"),
    (lambda: _scan_bomb(), "more than 64 scans"),
    (lambda: b"\xff\xd8" + b"\xff\xd0" * 2_000_000, "without a frame header"),   # 4 MB of markers
    (lambda: b"\xff\xd8" + b"\xff" * 4_000_000, "without a frame header"),
    (lambda: _jpeg()[:2] + _segment(0xFE, b"") * 5000 + _jpeg()[2:], "more than 4096 marker segments"),
])
def test_compressed_images_the_header_check_missed_mask_their_camera_alone_undecoded(payload, words, monkeypatch):
    """Found by fuzzing the node's input path: each of these reached the decoder (seconds, or
    gigabytes, or an exception that lost the whole frame). Now the camera is masked with a
    reason, from the header alone, and the other cameras are used."""
    import aqr_perception.frames.conversions as conv

    p, cams = _pipeline(transport="compressed")
    good = _compressed_msg(_jpeg())
    for c in cams:
        p.on_image(c.name, _compressed_msg(payload()) if c is cams[0] else good)
    decoded = []

    def counted(real):
        return lambda data, *a, **k: decoded.append(len(data)) or real(data, *a, **k)

    monkeypatch.setattr(conv.cv2, "imdecode", counted(conv.cv2.imdecode))
    monkeypatch.setattr(conv.simplejpeg, "decode_jpeg", counted(conv.simplejpeg.decode_jpeg))
    out = p.process(_cloud())
    assert out.status == "ok" and list(out.inputs.masked) == [cams[0].name], out.inputs.masked
    assert words in out.inputs.image_errors[cams[0].name]
    assert decoded == [len(good.data)] * 5                  # only the five good images were decoded


def test_a_static_transform_beyond_any_frame_on_earth_is_refused_not_made_inf():
    """A finite 1e300 m translation became inf in float32 lidar2img and the model's output
    NaN on every frame; now the transform is refused and that camera masked alone."""
    p, cams = _pipeline(tf_static=False)
    tf = _tf_static(cams)
    tf.transforms[0].transform.translation.x = 1e300
    rejected = p.on_tf_static(tf)
    assert [r.child for r in rejected] == [cams[0].name] and "beyond" in rejected[0].reason
    for c in cams:
        p.on_image(c.name, _image(c.name, NS))
    out = p.process(_cloud())
    assert list(out.inputs.masked) == [cams[0].name] and np.all(np.isfinite(out.inputs.arrays.lidar2img))


def test_a_point_step_numpy_cannot_hold_is_a_conversion_error():
    from sensor_msgs.msg import PointField

    from aqr_perception.frames.conversions import pointcloud2_to_xyzi

    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    cloud = PointCloud2(height=1, width=1, fields=fields, point_step=2**31, row_step=2**31, data=bytes(12))
    with pytest.raises(ConversionError, match="point_step 2147483648"):
        pointcloud2_to_xyzi(cloud)


def test_tens_of_thousands_of_point_fields_are_checked_in_linear_time():
    """The duplicate-name check counted every name in the list for every name: 40,000 fields
    took 16 s; the cloud is still refused for its duplicate."""
    import time

    from sensor_msgs.msg import PointField

    from aqr_perception.frames.conversions import pointcloud2_to_xyzi

    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    fields += [PointField(name=f"extra{i}", offset=12, datatype=PointField.UINT8, count=1) for i in range(40_000)]
    fields.append(PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1))
    cloud = PointCloud2(height=1, width=1, fields=fields, point_step=16, row_step=16, data=bytes(16))
    t0 = time.perf_counter()
    with pytest.raises(ConversionError, match="declares the field.s. x more than once"):
        pointcloud2_to_xyzi(cloud)
    assert time.perf_counter() - t0 < 3.0


def test_a_tracker_publishing_hundreds_of_object_frames_does_not_grow_the_pose_buffer():
    """10 new object frames a second for 30 s on /tf, next to the ego pose: frames gone for
    longer than the history are forgotten, and the LiDAR pose still comes out right."""
    from tf2_msgs.msg import TFMessage

    from aqr_perception.frames.ego_pose import EgoPoses
    from aqr_perception.frames.transforms import StaticTransforms

    poses, static = EgoPoses(history_s=10.0), StaticTransforms()
    static.add_message(TFMessage(transforms=[_transform("base_link", "lidar", t=(0.0, 0.0, 1.8))]))
    step = NS // 10
    for k in range(300):
        t = k * step
        objects = [_transform("map", f"object_{k}_{j}", t=(float(j), 0.0, 0.0), stamp_ns=t) for j in range(10)]
        poses.add_message(TFMessage(transforms=[_transform("map", "base_link", t=(0.1 * k, 0.0, 0.0), stamp_ns=t),
                                                *objects]))
    assert len(poses.edges) <= 1 + 10 * 11 * 10         # the ego edge + at most ~11 s of object frames
    p, _ = _pipeline(tf_static=False)
    p.calib.tf, p.poses = static, poses
    T = p.lidar_pose("lidar", 295 * step + step // 2)
    np.testing.assert_allclose(T[:3, 3], [29.55, 0.0, 1.8], atol=1e-9)


# ------------------------------------------------------------------ intensity conventions
def _cloud_with_intensity(intensity: np.ndarray | None, t_ns: int = NS):
    from rclpy.serialization import deserialize_message

    from aqr_perception.data.typestore import project_typestore

    n = 200 if intensity is None else len(intensity)
    pts = np.random.default_rng(0).normal(0, 10, (n, 4)).astype(np.float32)
    msg = M.pointcloud2(t_ns, "lidar", pts)
    if intensity is None:                                   # a driver without an intensity field
        msg.fields = msg.fields[:3]
    else:
        arr = np.frombuffer(bytes(msg.data), np.float32).reshape(n, 4).copy()
        arr[:, 3] = intensity
        msg.data = np.frombuffer(arr.tobytes(), np.uint8)
    raw = project_typestore().serialize_cdr(msg, "sensor_msgs/msg/PointCloud2")
    return deserialize_message(bytes(raw), PointCloud2)


@pytest.mark.parametrize("points", [200, 35_000])      # the large sweep: the percentile of a sample
@pytest.mark.parametrize("scale, words", [(1.0, None), (255.0, "exceeds the model's 0-255"),
                                          (1 / 255, "a driver normalising to 0-1"),
                                          (None, "without an intensity field")])
def test_an_intensity_convention_that_does_not_fit_is_reported(scale, words, points):
    """The bundled drive's intensities (0-59 of 0-255) fit; x255 (16-bit), /255 (0-1) or no
    field do not, and the pipeline says which."""
    p, cams = _pipeline()
    recorded = np.random.default_rng(1).uniform(0, 59, points).astype(np.float32)
    for k in range(p.intensity.WINDOW):
        p.process(_cloud_with_intensity(None if scale is None else recorded * scale, t_ns=NS + k * NS // 20))
    problem = p.intensity.problem()
    assert (problem is None) if words is None else (words in problem), problem


def test_the_intensity_warning_clears_once_the_driver_sends_intensity_again():
    """Two sweeps without an intensity field, then good ones: the LiDAR is used again at
    once, and the warning (on /diagnostics) names the bad sweeps only while they are among
    the last ``WINDOW``. Before, it stayed, saying the LiDAR was masked, for good."""
    p, _ = _pipeline()
    recorded = np.random.default_rng(1).uniform(0, 59, 200).astype(np.float32)
    t = iter(range(NS, 100 * NS, NS // 10))
    for _ in range(2):
        assert p.assemble(_cloud_with_intensity(None, t_ns=next(t))).lidar_masked
    out = p.assemble(_cloud_with_intensity(recorded, t_ns=next(t)))
    assert out.lidar_masked is None and out.arrays.lidar_valid
    assert "2 of the last 3 sweeps without an intensity field" in p.intensity.problem()
    for _ in range(p.intensity.WINDOW - 3):
        p.assemble(_cloud_with_intensity(recorded, t_ns=next(t)))
    assert "2 of the last" in p.intensity.problem()            # still in the window
    p.assemble(_cloud_with_intensity(recorded, t_ns=next(t)))
    assert "1 of the last" in p.intensity.problem()
    p.assemble(_cloud_with_intensity(recorded, t_ns=next(t)))
    assert p.intensity.problem() is None
    assert p.intensity.without_field == 2                       # the count of all of them stays


def test_lidar_intensity_scale_brings_a_normalised_driver_to_the_model_scale():
    recorded = np.random.default_rng(1).uniform(0, 59, 200).astype(np.float32)
    a, _ = _pipeline()
    b, _ = _pipeline(node={"lidar_intensity_scale": 255.0})
    out_a = a.assemble(_cloud_with_intensity(recorded))
    out_b = b.assemble(_cloud_with_intensity(recorded / 255.0))
    np.testing.assert_allclose(out_b.arrays.points, out_a.arrays.points, rtol=1e-5)


@pytest.mark.parametrize("intensity", [None, "zeros"], ids=["no_field", "all_zero"])
def test_a_sweep_without_intensity_is_masked_for_a_model_that_needs_it(intensity):
    """The bundled model reads geometry through intensity: given a sweep without it, it
    did far worse than with no LiDAR at all (NDS 0.014 against 0.238 on six held-out
    drives). So it gets no points and says why; a model trained with intensity dropout
    (``intensity_required: false``) keeps the geometry."""
    from aqr_perception.config import LidarBranchConfig

    cloud = _cloud_with_intensity(None if intensity is None else np.zeros(200, np.float32))
    p, _ = _pipeline()
    assert p.intensity.required                              # the default: what the bundled model states
    out = p.assemble(cloud)
    assert out.lidar_masked and "no intensity" in out.lidar_masked
    assert len(out.arrays.points) == 0 and not out.arrays.lidar_valid
    assert "LiDAR masked" in p.intensity.problem()
    cams = nuscenes_like_rig(W, H)
    geometry_only = FramePipeline(NodeConfig(camera_names=[c.name for c in cams]), StubRuntime(),
                                  lidar=LidarBranchConfig(intensity_required=False))
    kept = geometry_only.assemble(cloud)
    assert kept.lidar_masked is None and len(kept.arrays.points) == 200 and kept.arrays.lidar_valid
    assert not kept.arrays.points[:, 3].any()
    assert "geometry alone" in geometry_only.intensity.problem()


def test_training_with_intensity_dropout_states_it_in_the_model_config(tmp_path):
    from aqr_perception.config import load_config
    from aqr_perception.data.synth.drive import generate_drive
    from aqr_perception.model.checkpoint import read_model_config
    from aqr_perception.training.train import train

    cfg = load_config("tiny", overrides=["synth.frames_per_drive=2", "synth.lidar_azimuth_steps=180",
                                         "train.drop_intensity_p=0.5", "train.batch_size=1"])
    generate_drive(cfg, tmp_path / "data", "d0", seed=5)
    assert cfg.model.lidar.intensity_required
    train(cfg, tmp_path / "data", tmp_path / "run", device_name="cpu", max_steps=1, progress=False)
    assert read_model_config(tmp_path / "run" / "final.pt").lidar.intensity_required is False


@pytest.mark.parametrize("topic, d, warned", [("/{camera}/image_raw", [-0.31, 0.12, 0, 0, 0], True),
                                              ("/{camera}/image_rect_compressed", [-0.31, 0.12, 0, 0, 0], False),
                                              ("/{camera}/image_rect_color", [-0.31, 0.12, 0, 0, 0], False),
                                              ("/direct_{camera}/image_raw", [-0.31, 0.12, 0, 0, 0], True),
                                              ("/{camera}/image_raw", [0.0] * 5, False),
                                              ("/{camera}/image_raw", [], False)])
def test_a_distorted_camera_on_a_topic_that_is_not_rectified_is_named(topic, d, warned):
    """A rectified image's CameraInfo keeps the raw camera's D (ROS' convention), so only a
    stated distortion on a topic that is no image_rect one is said; D = 0 or empty is not."""
    from aqr_perception.config import NodeConfig
    from aqr_perception.frames.pipeline import FramePipeline

    cams = nuscenes_like_rig(W, H)
    p = FramePipeline(NodeConfig(image_topic_format=topic, camera_names=[c.name for c in cams]), input_hw=(H, W))
    info = _info(cams[0].name, cams[0].K)
    info.distortion_model, info.d = "plumb_bob", d
    p.on_camera_info(cams[0].name, info)
    text = p.unrectified_camera(cams[0].name)
    assert (text is not None) == warned, text
    if warned:
        assert text.startswith(topic.format(camera=cams[0].name)) and "plumb_bob (largest |D| 0.31)" in text
    p.on_camera_info(cams[0].name, _info(cams[0].name, cams[0].K))
    assert p.unrectified_camera(cams[0].name) is None
