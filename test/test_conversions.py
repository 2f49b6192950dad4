"""Message -> numpy conversion, checked on bytes serialised by rosbags and decoded by rclpy."""
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image, PointCloud2

from aqr_perception.data.typestore import project_typestore
from aqr_perception.frames import conversions as C

STORE = project_typestore()
T = STORE.types


def _via_rclpy(msg, msgtype, cls):
    """rosbags object -> CDR bytes -> rclpy message (what a subscriber gets)."""
    return deserialize_message(bytes(STORE.serialize_cdr(msg, msgtype)), cls)


def _cloud(fields, rows, point_step, height=1, row_pad=0, big=False):
    """PointCloud2 with ``fields`` = [(name, offset, datatype)], ``rows`` a structured array."""
    n = rows.shape[0]
    width = n // height
    data = bytearray()
    raw = rows.tobytes()
    for r in range(height):
        data += raw[r * width * point_step:(r + 1) * width * point_step] + b"\xee" * row_pad
    PF = T["sensor_msgs/msg/PointField"]
    Hdr, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    msg = T["sensor_msgs/msg/PointCloud2"](
        header=Hdr(stamp=Time(sec=1, nanosec=2), frame_id="lidar"), height=height, width=width,
        fields=[PF(name=nm, offset=o, datatype=d, count=1) for nm, o, d in fields], is_bigendian=big,
        point_step=point_step, row_step=width * point_step + row_pad, data=np.frombuffer(bytes(data), np.uint8),
        is_dense=False)
    return _via_rclpy(msg, "sensor_msgs/msg/PointCloud2", PointCloud2)


def test_float32_cloud_with_padding_and_extra_fields():
    dt = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": ["<f4"] * 4 + ["<u2"],
                   "offsets": [0, 4, 8, 16, 20], "itemsize": 32})
    rng = np.random.default_rng(0)
    rows = np.zeros(100, dt)
    for k in "xyz":
        rows[k] = rng.normal(0, 10, 100)
    rows["intensity"] = rng.uniform(0, 255, 100)
    rows["ring"] = np.arange(100) % 32
    cloud = _cloud([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7), ("ring", 20, 4)], rows, 32)
    xyzi = C.pointcloud2_to_xyzi(cloud)
    np.testing.assert_array_equal(xyzi, np.stack([rows["x"], rows["y"], rows["z"], rows["intensity"]], 1))
    ring = C.read_points_numpy(cloud, ["ring"])
    np.testing.assert_array_equal(ring[:, 0], rows["ring"])


def test_mixed_datatypes_uint8_intensity_float64_xyz_big_endian():
    dt = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": [">f8", ">f8", ">f8", "u1"],
                   "offsets": [0, 8, 16, 24], "itemsize": 25})
    rows = np.zeros(7, dt)
    rows["x"], rows["y"], rows["z"] = np.arange(7) * 1.5, -np.arange(7), 0.25
    rows["intensity"] = np.arange(7) * 30
    cloud = _cloud([("x", 0, 8), ("y", 8, 8), ("z", 16, 8), ("intensity", 24, 2)], rows, 25, big=True)
    xyzi = C.pointcloud2_to_xyzi(cloud)
    expected = np.stack([rows["x"], rows["y"], rows["z"], rows["intensity"].astype(float)], 1).astype(np.float32)
    np.testing.assert_array_equal(xyzi, expected)


def test_organized_cloud_with_row_padding_and_nans():
    dt = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 12})
    rows = np.zeros(12, dt)
    rows["x"] = np.arange(12)
    rows["y"] = 1.0
    rows["z"] = 2.0
    rows["x"][[3, 7]] = np.nan
    rows["z"][5] = np.inf
    cloud = _cloud([("x", 0, 7), ("y", 4, 7), ("z", 8, 7)], rows, 12, height=3, row_pad=5)
    all_pts = C.read_points_numpy(cloud, ["x", "y", "z"])
    assert all_pts.shape == (12, 3)
    np.testing.assert_array_equal(all_pts[~np.isnan(all_pts[:, 0]), 0], rows["x"][~np.isnan(rows["x"])])
    assert C.read_points_numpy(cloud, ["x", "y", "z"], skip_nans=True).shape == (10, 3)
    xyzi = C.pointcloud2_to_xyzi(cloud)               # non-finite dropped, intensity zeros
    assert xyzi.shape == (9, 4) and np.all(xyzi[:, 3] == 0)


@pytest.mark.parametrize("bad, words", [
    (lambda f, ps: ([x for x in f if x[0] != "z"], ps), "no 'z' field"),
    (lambda f, ps: ([(n, o, 42 if n == "x" else d) for n, o, d in f], ps), "unknown datatype"),
    (lambda f, ps: (f, 8), "does not fit point_step"),
])
def test_broken_clouds_raise_clear_errors(bad, words):
    dt = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 12})
    fields, step = bad([("x", 0, 7), ("y", 4, 7), ("z", 8, 7)], 12)
    rows = np.zeros(4, dt)
    cloud = _cloud(fields, rows, 12)
    cloud.point_step = step
    with pytest.raises(C.ConversionError, match=words):
        C.pointcloud2_to_xyzi(cloud)


def test_truncated_cloud_data():
    dt = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 12})
    cloud = _cloud([("x", 0, 7), ("y", 4, 7), ("z", 8, 7)], np.zeros(4, dt), 12)
    cloud.width = 10
    with pytest.raises(C.ConversionError, match="bytes"):
        C.pointcloud2_to_xyzi(cloud)


def _image(arr, encoding, pad=0):
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    rows = np.concatenate([arr.reshape(h, w * ch), np.full((h, pad), 7, np.uint8)], 1) if pad else arr.reshape(h, -1)
    Hdr, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    msg = T["sensor_msgs/msg/Image"](header=Hdr(stamp=Time(sec=0, nanosec=0), frame_id="cam"), height=h, width=w,
                                     encoding=encoding, is_bigendian=0, step=w * ch + pad,
                                     data=np.ascontiguousarray(rows).reshape(-1))
    return _via_rclpy(msg, "sensor_msgs/msg/Image", Image)


@pytest.mark.parametrize("pad", [0, 3])
def test_raw_images_in_every_encoding(pad):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(C.imgmsg_to_cv2(_image(rgb, "rgb8", pad), "rgb8"), rgb)
    np.testing.assert_array_equal(C.imgmsg_to_cv2(_image(rgb[..., ::-1].copy(), "bgr8", pad), "rgb8"), rgb)
    np.testing.assert_array_equal(C.imgmsg_to_cv2(_image(rgb, "rgb8", pad), "bgr8"), rgb[..., ::-1])
    mono = rgb[..., 0].copy()
    np.testing.assert_array_equal(C.imgmsg_to_cv2(_image(mono, "mono8", pad), "rgb8"), np.repeat(mono[..., None], 3, 2))
    np.testing.assert_array_equal(C.imgmsg_to_cv2(_image(rgb, "rgb8", pad)), rgb)      # passthrough


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_every_bayer_mosaic_demosaics_to_its_colours(pattern):
    """A mosaic sampled from a scene of one colour, in each of ROS' four Bayer patterns
    (the 2x2 tile's colours row by row): its inside demosaics to that colour. A pattern
    mapped to the wrong OpenCV code swaps red and blue."""
    colour = {"r": 200, "g": 120, "b": 40}
    h, w = 8, 10
    tile = np.array([[colour[pattern[0]], colour[pattern[1]]], [colour[pattern[2]], colour[pattern[3]]]], np.uint8)
    mosaic = np.tile(tile, (h // 2, w // 2))
    rgb = C.imgmsg_to_cv2(_image(mosaic, f"bayer_{pattern}8"), "rgb8")
    np.testing.assert_array_equal(rgb[2:-2, 2:-2], np.broadcast_to([200, 120, 40], (h - 4, w - 4, 3)))
    assert C.imgmsg_to_cv2(_image(mosaic, f"bayer_{pattern}8"), "bgr8")[3, 3].tolist() == [40, 120, 200]


@pytest.mark.parametrize("encoding, order", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUYV")])
def test_packed_yuv422_decodes_to_its_colours(encoding, order):
    """yuv422 (UYVY, cv_bridge's and image_transport's name) and yuv422_yuy2 (YUYV, a USB
    camera's usual format), packed by hand from colour bars with ITU-R BT.601's studio-range
    formulas (Y 16-235, what cameras send and OpenCV's 4:2:2 decoders expect): they decode to
    those colours (within rounding), and the swapped order does not."""
    bars = np.repeat(np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [128, 128, 128]], np.uint8), 4, axis=0)
    rgb = np.broadcast_to(bars[None], (4, 16, 3)).copy()
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    y = np.rint(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255).astype(np.uint8)
    u = np.rint(128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255).astype(np.uint8)
    v = np.rint(128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255).astype(np.uint8)
    pu, pv = u[:, 0::2], v[:, 0::2]                               # one U and V per pixel pair
    packed = np.zeros((4, 16, 2), np.uint8)
    packed[..., 1 if order == "UYVY" else 0] = y
    chroma = packed[..., 0 if order == "UYVY" else 1]
    chroma[:, 0::2], chroma[:, 1::2] = pu, pv
    out = C.imgmsg_to_cv2(_image(packed, encoding), "rgb8").astype(int)
    assert np.abs(out - rgb).max() <= 3
    np.testing.assert_array_equal(C.imgmsg_to_cv2(_image(packed, encoding), "mono8"), y)   # the luma itself
    other = "yuv422_yuy2" if encoding == "yuv422" else "yuv422"
    assert np.abs(C.imgmsg_to_cv2(_image(packed, other), "rgb8").astype(int) - rgb).max() > 50


def test_bad_raw_images():
    rgb = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(C.ConversionError, match="unsupported image encoding"):
        C.imgmsg_to_cv2(_image(rgb, "32FC1"), "rgb8")
    with pytest.raises(C.ConversionError, match="yuv422_yuy2 image of odd width 3"):
        C.imgmsg_to_cv2(_image(np.zeros((4, 3, 2), np.uint8), "yuv422_yuy2"), "rgb8")

    msg = _image(rgb, "rgb8")
    msg.step = 5
    with pytest.raises(C.ConversionError, match="step"):
        C.imgmsg_to_cv2(msg, "rgb8")
    msg = _image(rgb, "rgb8")
    msg.height = 9
    with pytest.raises(C.ConversionError, match="bytes"):
        C.imgmsg_to_cv2(msg, "rgb8")


def _compressed(data: bytes, fmt: str):
    Hdr, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    msg = T["sensor_msgs/msg/CompressedImage"](header=Hdr(stamp=Time(sec=0, nanosec=0), frame_id="cam"),
                                               format=fmt, data=np.frombuffer(data, np.uint8))
    return _via_rclpy(msg, "sensor_msgs/msg/CompressedImage", CompressedImage)


def test_compressed_png_is_lossless_and_jpeg_matches_imdecode():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    png = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()
    png_msg = _compressed(png, "bgr8; png compressed bgr8")
    np.testing.assert_array_equal(C.compressed_imgmsg_to_cv2(png_msg, "rgb8"), rgb)
    jpg = cv2.imencode(".jpg", rgb[..., ::-1])[1].tobytes()
    expected = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(C.compressed_imgmsg_to_cv2(_compressed(jpg, "jpeg"), "rgb8"), expected)
    with pytest.raises(C.ConversionError, match="not a decodable"):
        C.compressed_imgmsg_to_cv2(_compressed(b"\xff\xd8 definitely not a jpeg", "jpeg"), "rgb8")
    with pytest.raises(C.ConversionError, match="not a decodable"):
        C.compressed_imgmsg_to_cv2(_compressed(b"", "jpeg"), "rgb8")


def test_camera_info_validation():
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=100, height=50)
    info.k = [50.0, 0.0, 50.0, 0.0, 50.0, 25.0, 0.0, 0.0, 1.0]
    np.testing.assert_array_equal(C.camera_info_K(info), np.array(info.k).reshape(3, 3))
    info.k = [0.0] * 9
    with pytest.raises(C.ConversionError, match="intrinsics"):
        C.camera_info_K(info)
    info.k = [float("nan")] * 9
    with pytest.raises(C.ConversionError, match="intrinsics"):
        C.camera_info_K(info)


# --- cross-checks against the reference libraries
# Images: cv_bridge (PyPI cv-bridge, or a distro's). PyPI's cv-bridge 1.13.0.post0 reads a
# padded image as if it were packed (it ignores step), so a padded message is checked
# against cv_bridge's result for the same pixels sent packed.
# (PyPI's cv-bridge knows no bayer_grbg8 nor yuv422: those are checked below without it)
ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "bayer_rggb8": 1, "bayer_bggr8": 1,
             "bayer_gbrg8": 1}
DESIRED = ("rgb8", "bgr8", "mono8", "passthrough")


@pytest.fixture(scope="module")
def bridge():
    """The image reference (PyPI ``cv-bridge`` in the venv, a distro's cv_bridge on a vehicle)."""
    return pytest.importorskip("cv_bridge", reason="cv_bridge (pip install cv-bridge) is the reference").CvBridge()


@pytest.mark.parametrize("pad", [0, 1, 3])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_raw_image_conversion_matches_cv_bridge(bridge, encoding, pad):
    ch = ENCODINGS[encoding]
    arr = np.random.default_rng(3).integers(0, 256, (6, 9, ch) if ch > 1 else (6, 9), dtype=np.uint8)
    msg, packed = _image(arr, encoding, pad), _image(arr, encoding)
    assert msg.step == 9 * ch + pad
    for desired in DESIRED:
        ours = C.imgmsg_to_cv2(msg, desired)
        ref = bridge.imgmsg_to_cv2(packed, desired)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype, (desired, ours.shape, ref.shape)
        np.testing.assert_array_equal(ours, ref, err_msg=f"{encoding} pad={pad} -> {desired}")


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_image_conversion_matches_cv_bridge(bridge, fmt):
    rng = np.random.default_rng(4)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (5, 5), 0)
    msg = _compressed(cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr)[1].tobytes(), fmt)
    for desired in DESIRED:
        ours, ref = C.compressed_imgmsg_to_cv2(msg, desired), bridge.compressed_imgmsg_to_cv2(msg, desired)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype, (desired, ours.shape, ref.shape)
        np.testing.assert_array_equal(ours, ref, err_msg=f"{fmt} -> {desired}")
    # the node's decode at full size (reduction 1) too
    img, warning = C.compressed_to_rgb_reduced(msg, 1)
    np.testing.assert_array_equal(img, bridge.compressed_imgmsg_to_cv2(msg, "rgb8"))
    assert warning is None
    if fmt == "jpeg":   # ...and at every reduction, against OpenCV's own reduced DCT decode
        flags = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
        for r, flag in flags.items():
            ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(msg.data, np.uint8), flag), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(C.compressed_to_rgb_reduced(msg, r)[0], ref, err_msg=f"1/{r}")


def _damaged_jpeg() -> tuple[bytes, bytes]:
    """A 1600x900 JPEG and a copy whose middle 64 entropy-coded bytes are overwritten."""
    rng = np.random.default_rng(7)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8), (0, 0), 3)
    good = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    bad = bytearray(good)
    bad[len(bad) // 2: len(bad) // 2 + 64] = b"\xaa" * 64
    return good, bytes(bad)


def test_a_damaged_jpeg_decodes_as_opencv_does_and_says_so():
    # OpenCV decodes it too, printing libjpeg's warning to stderr only: the same pixels
    # here, and the warning comes back to be counted
    good, bad = _damaged_jpeg()
    img, warning = C.compressed_to_rgb_reduced(_compressed(bad, "jpeg"), 1)
    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(img, ref)
    assert warning is not None and warning.startswith("JPEG decoder warning: Corrupt JPEG data")
    truncated = C.compressed_to_rgb_reduced(_compressed(good[: len(good) // 2], "jpeg"), 2)[1]
    assert truncated is not None and "Premature end of JPEG file" in truncated
    assert C.compressed_to_rgb_reduced(_compressed(good, "jpeg"), 2)[1] is None


# Clouds: sensor_msgs_py comes only with a ROS distro. ros2-numpy (PyPI) is no reference:
# 0.0.5 reads x, y, z as float32 at bytes 0-11 whatever the fields say, takes the
# intensity field's *index* in the field list as its byte offset and reads it as uint16,
# ignores is_bigendian, and fails on padded rows; its numbers are wrong even for a packed
# float32 x, y, z, intensity cloud. Here the reference is the structured array the cloud
# is built from (the tests above), and sensor_msgs_py where it is installed (for a cloud
# without row padding: sensor_msgs_py reads rows as packed, ignoring row_step).
@pytest.mark.skipif(C._ros_read_points_numpy is None,
                    reason="sensor_msgs_py comes with a ROS distro (not on PyPI); cross-check there")
def test_cloud_reader_matches_sensor_msgs_py_where_present():  # pragma: no cover - distro machines only
    dt = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 16],
                   "itemsize": 24})
    rows = np.zeros(20, dt)
    rows["x"], rows["y"], rows["z"], rows["intensity"] = np.arange(20), -np.arange(20), 0.5, np.arange(20) * 3
    cloud = _cloud([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7)], rows, 24)
    names = ["x", "y", "z", "intensity"]
    np.testing.assert_array_equal(C._ros_read_points_numpy(cloud, names), C.read_points_numpy_fallback(cloud, names))


@pytest.mark.parametrize("r", [2, 4, 8])
def test_reduced_jpeg_decode_keeps_projection_consistent(r):
    # a bright dot at a known full-resolution pixel lands where the reduced intrinsics say
    h, w = 904, 1600
    K = np.array([[1200.0, 0, 801.3], [0, 1200.0, 452.7], [0, 0, 1]])
    p_cam = np.array([1.7, -0.9, 12.0])
    u, v = (K @ (p_cam / p_cam[2]))[:2]
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (int(round(u * 16)), int(round(v * 16))), 6 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert C.jpeg_reduction((h, w), (h // r, w // r)) == r and C.jpeg_reduction((h, w), (h, w)) == 1
    small, _ = C.compressed_to_rgb_reduced(_compressed(jpg, "jpeg"), r)
    assert small.shape[:2] == (-(-h // r), -(-w // r))
    Kr = C.reduce_intrinsics(K, r)
    ur, vr = (Kr @ (p_cam / p_cam[2]))[:2]
    weight = small[..., 0].astype(float)
    ys, xs = np.mgrid[0:small.shape[0], 0:small.shape[1]]
    cu, cv_ = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()   # dot centroid
    assert abs(cu - ur) < 0.25 and abs(cv_ - vr) < 0.25


def test_a_point_with_a_non_finite_intensity_is_kept_with_zero_intensity_and_counted():
    dt = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12],
                   "itemsize": 16})
    rows = np.zeros(5, dt)
    rows["x"], rows["intensity"] = np.arange(5), [1.0, np.nan, np.inf, 4.0, 5.0]
    rows["y"][4] = np.nan                                   # a bad position still drops the point
    cloud = _cloud([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7)], rows, 16)
    repairs = {}
    pts = C.pointcloud2_to_xyzi(cloud, repairs=repairs)
    np.testing.assert_array_equal(pts[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(pts[:, 3], [1, 0, 0, 4])
    assert repairs == {"intensity_non_finite": 2}


@pytest.mark.parametrize("layout, words", [
    ([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("x", 12, 7)], "more than once"),
    ([("x", 0, 7), ("y", 2, 7), ("z", 8, 7)], "overlap"),
    ([("x", 0, 7), ("y", 4, 7), ("z", 4, 7)], "overlap"),
])
def test_field_layouts_that_would_decode_wrong_numbers_are_refused(layout, words):
    rows = np.zeros(3, np.dtype({"names": ["a"], "formats": ["<f4"], "offsets": [0], "itemsize": 16}))
    with pytest.raises(C.ConversionError, match=words):
        C.pointcloud2_to_xyzi(_cloud(layout, rows, 16))


def test_a_field_with_count_other_than_one_is_refused():
    rows = np.zeros(3, np.dtype({"names": ["a"], "formats": ["<f4"], "offsets": [0], "itemsize": 16}))
    cloud = _cloud([("x", 0, 7), ("y", 4, 7), ("z", 8, 7)], rows, 16)
    cloud.fields[1].count = 3
    with pytest.raises(C.ConversionError, match="count 3"):
        C.pointcloud2_to_xyzi(cloud)


_INTENSITY_TYPES = {2: "u1", 4: "u2", 6: "u4", 7: "f4", 8: "f8"}


@settings(max_examples=150, deadline=None)
@given(xyz_offset=st.sampled_from([0, 4, 16]), intensity=st.sampled_from([None, 2, 4, 6, 7, 8]),
       extra=st.integers(0, 9), height=st.sampled_from([1, 3]), big=st.booleans(), xyz_f64=st.booleans(),
       seed=st.integers(0, 2**16))
def test_cloud_layouts_read_the_values_written(xyz_offset, intensity, extra, height, big, xyz_f64, seed):
    """Drivers' layouts (x, y, z side by side at some offset, an intensity of any width after
    them or none, padding, organised rows, either byte order, float64 positions): the points
    read are the values written, with non-finite positions dropped and a non-finite intensity
    0. Most of them take the strided fast path, the rest the general reader."""
    order = ">" if big else "<"
    xyz_type = "f8" if xyz_f64 else "f4"
    size = 8 if xyz_f64 else 4
    names, formats, offsets = ["x", "y", "z"], [order + xyz_type] * 3, [xyz_offset + k * size for k in range(3)]
    end = xyz_offset + 3 * size
    fields = [(nm, o, 8 if xyz_f64 else 7) for nm, o in zip(names, offsets)]
    if intensity is not None:
        names.append("intensity")
        formats.append(order + _INTENSITY_TYPES[intensity])
        offsets.append(end + 1)
        fields.append(("intensity", end + 1, intensity))
        end += 1 + np.dtype(_INTENSITY_TYPES[intensity]).itemsize
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": end + extra})
    rng = np.random.default_rng(seed)
    rows = np.zeros(6 * height, dt)
    for k in "xyz":
        rows[k] = rng.normal(0, 30, rows.size)
    rows["x"][rng.random(rows.size) < 0.2] = np.nan
    rows["z"][rng.random(rows.size) < 0.1] = np.inf
    if intensity is not None:
        kind = np.dtype(_INTENSITY_TYPES[intensity]).kind
        rows["intensity"] = rng.uniform(0, 250, rows.size) if kind == "f" else rng.integers(0, 250, rows.size)
        if kind == "f":
            rows["intensity"][rng.random(rows.size) < 0.2] = np.nan
    got = C.pointcloud2_to_xyzi(_cloud(fields, rows, dt.itemsize, height=height, big=big))
    xyz = np.stack([rows[k].astype(np.float64) for k in "xyz"], 1)
    inten = rows["intensity"].astype(np.float64) if intensity is not None else np.zeros(rows.size)
    keep = np.isfinite(xyz).all(1)
    expected = np.concatenate([xyz, np.nan_to_num(inten, nan=0.0)[:, None]], 1)[keep].astype(np.float32)
    np.testing.assert_array_equal(got, expected)
