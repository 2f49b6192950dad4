"""Zero-copy views of serialised Image / CompressedImage / PointCloud2, and the readers of
CameraInfo / TFMessage (the node's raw subscriptions), against rclpy's own deserialisation
and rosbags' (big endian)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

from aqr_perception.data import rosbag_msgs as M
from aqr_perception.data.typestore import project_typestore
from aqr_perception.frames.cdr import (
    CdrError,
    parse_camera_info,
    parse_compressed_image,
    parse_image,
    parse_pointcloud2,
    parse_tf_message,
)


def _same_header(view, msg) -> None:
    assert (view.header.stamp.sec, view.header.stamp.nanosec, view.header.frame_id) == \
        (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)


@given(frame=st.text(max_size=9), encoding=st.sampled_from(["rgb8", "bgr8", "mono8", "16UC1", ""]),
       h=st.integers(0, 5), w=st.integers(0, 7), big=st.integers(0, 1), sec=st.integers(-2**31, 2**31 - 1),
       nanosec=st.integers(0, 2**32 - 1), extra=st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_image_view_equals_rclpy(frame, encoding, h, w, big, sec, nanosec, extra):
    m = Image()
    m.header.frame_id, m.header.stamp.sec, m.header.stamp.nanosec = frame, sec, nanosec
    m.height, m.width, m.encoding, m.is_bigendian, m.step = h, w, encoding, big, 3 * w + extra
    m.data = bytes(np.random.default_rng(h * 31 + w).integers(0, 256, h * (3 * w + extra), dtype=np.uint8))
    buf = serialize_message(m)
    v, ref = parse_image(buf), deserialize_message(buf, Image)
    _same_header(v, ref)
    assert (v.height, v.width, v.encoding, v.is_bigendian, v.step) == (ref.height, ref.width, ref.encoding,
                                                                       ref.is_bigendian, ref.step)
    assert bytes(v.data) == bytes(ref.data)


def test_the_pixels_are_a_view_into_the_received_bytes():
    m = M.raw_image(123, "CAM_FRONT", np.zeros((90, 160, 3), np.uint8))
    buf = bytes(project_typestore().serialize_cdr(m, "sensor_msgs/msg/Image"))
    v = parse_image(buf)
    assert v.data.size == 90 * 160 * 3 and not v.data.flags.owndata
    assert np.shares_memory(v.data, np.frombuffer(buf, np.uint8))


def test_compressed_image_and_cloud_equal_rclpy():
    jpg = M.compressed_image(5_000_000_123, "CAM_BACK", np.full((16, 24, 3), 90, np.uint8), 80)
    store = project_typestore()
    buf = bytes(store.serialize_cdr(jpg, "sensor_msgs/msg/CompressedImage"))
    v, ref = parse_compressed_image(buf), deserialize_message(buf, CompressedImage)
    _same_header(v, ref)
    assert v.format == ref.format and bytes(v.data) == bytes(ref.data)
    pts = np.random.default_rng(1).normal(0, 10, (57, 4)).astype(np.float32)
    cloud = M.pointcloud2(7, "LIDAR_TOP", pts, np.arange(57, dtype=np.uint16))
    buf = bytes(store.serialize_cdr(cloud, "sensor_msgs/msg/PointCloud2"))
    v, ref = parse_pointcloud2(buf), deserialize_message(buf, PointCloud2)
    _same_header(v, ref)
    assert [(f.name, f.offset, f.datatype, f.count) for f in v.fields] == \
        [(f.name, f.offset, f.datatype, f.count) for f in ref.fields]
    assert (v.height, v.width, v.is_bigendian, v.point_step, v.row_step, v.is_dense) == \
        (ref.height, ref.width, ref.is_bigendian, ref.point_step, ref.row_step, ref.is_dense)
    assert bytes(v.data) == bytes(ref.data)


def test_big_endian_cdr_reads_the_same():
    store = project_typestore()
    cloud = M.pointcloud2(9, "LIDAR_TOP", np.ones((3, 4), np.float32), np.zeros(3, np.uint16))
    le = parse_pointcloud2(bytes(store.serialize_cdr(cloud, "sensor_msgs/msg/PointCloud2")))
    be = parse_pointcloud2(bytes(store.serialize_cdr(cloud, "sensor_msgs/msg/PointCloud2", little_endian=False)))
    assert be.header == le.header and be.fields == le.fields
    assert (be.width, be.point_step, be.row_step) == (le.width, le.point_step, le.row_step)


def test_every_truncation_is_a_cdr_error_naming_the_field():
    c = PointCloud2()
    c.header.frame_id, c.width, c.height, c.point_step, c.row_step = "L", 2, 1, 4, 8
    c.fields = [PointField(name="x", offset=0, datatype=7, count=1)]
    c.data = bytes(8)
    buf = serialize_message(c)
    for n in range(len(buf) - 1):
        with pytest.raises(CdrError, match="PointCloud2"):
            parse_pointcloud2(buf[:n])
    with pytest.raises(CdrError, match="encapsulation"):
        parse_image(b"\x07\x00\x00\x00" + buf[4:])


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(frame=st.text(max_size=9), model=st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant", ""]),
       d=st.lists(_finite, max_size=14), k=st.lists(_finite, min_size=9, max_size=9),
       p=st.lists(_finite, min_size=12, max_size=12), h=st.integers(0, 2**32 - 1), w=st.integers(0, 2**32 - 1),
       binning=st.integers(0, 8), roi=st.tuples(*[st.integers(0, 2**32 - 1)] * 4, st.booleans()))
@settings(max_examples=100, deadline=None)
def test_camera_info_equals_rclpy(frame, model, d, k, p, h, w, binning, roi):
    from sensor_msgs.msg import CameraInfo

    m = CameraInfo(height=h, width=w, distortion_model=model, d=d, k=k, p=p, binning_x=binning,
                   binning_y=binning + 1)
    m.header.frame_id, m.header.stamp.sec, m.header.stamp.nanosec = frame, 17, 5
    m.r = list(reversed(k))
    m.roi.x_offset, m.roi.y_offset, m.roi.height, m.roi.width, m.roi.do_rectify = roi
    buf = serialize_message(m)
    v, ref = parse_camera_info(buf), deserialize_message(buf, CameraInfo)
    _same_header(v, ref)
    assert (v.height, v.width, v.distortion_model, v.binning_x, v.binning_y) == \
        (ref.height, ref.width, ref.distortion_model, ref.binning_x, ref.binning_y)
    for name in ("d", "k", "r", "p"):
        assert list(getattr(v, name)) == list(getattr(ref, name)), name
    assert (v.roi.x_offset, v.roi.y_offset, v.roi.height, v.roi.width, v.roi.do_rectify) == \
        (ref.roi.x_offset, ref.roi.y_offset, ref.roi.height, ref.roi.width, ref.roi.do_rectify)


@given(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6), st.integers(-2**31, 2**31 - 1),
                          st.lists(_finite, min_size=7, max_size=7)), max_size=5))
@settings(max_examples=100, deadline=None)
def test_tf_message_equals_rclpy(transforms):
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    m = TFMessage()
    for parent, child, sec, (tx, ty, tz, qx, qy, qz, qw) in transforms:
        t = TransformStamped(child_frame_id=child)
        t.header.frame_id, t.header.stamp.sec = parent, sec
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = tx, ty, tz
        t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = qx, qy, qz, qw
        m.transforms.append(t)
    buf = serialize_message(m)
    v, ref = parse_tf_message(buf), deserialize_message(buf, TFMessage)
    assert len(v.transforms) == len(ref.transforms)
    for a, b in zip(v.transforms, ref.transforms):
        _same_header(a, b)
        assert a.child_frame_id == b.child_frame_id
        ta, tb = a.transform, b.transform
        assert (ta.translation.x, ta.translation.y, ta.translation.z) == \
            (tb.translation.x, tb.translation.y, tb.translation.z)
        assert (ta.rotation.x, ta.rotation.y, ta.rotation.z, ta.rotation.w) == \
            (tb.rotation.x, tb.rotation.y, tb.rotation.z, tb.rotation.w)


def test_camera_info_and_tf_read_the_same_in_big_endian():
    from rosbags.typesys.stores.ros2_humble import builtin_interfaces__msg__Time as Time
    from rosbags.typesys.stores.ros2_humble import geometry_msgs__msg__Quaternion as Quaternion
    from rosbags.typesys.stores.ros2_humble import geometry_msgs__msg__Transform as Transform
    from rosbags.typesys.stores.ros2_humble import geometry_msgs__msg__TransformStamped as TransformStamped
    from rosbags.typesys.stores.ros2_humble import geometry_msgs__msg__Vector3 as Vector3
    from rosbags.typesys.stores.ros2_humble import std_msgs__msg__Header as Header
    from rosbags.typesys.stores.ros2_humble import tf2_msgs__msg__TFMessage as TFMessage

    store = project_typestore()
    tf = TFMessage(transforms=[TransformStamped(Header(Time(3, 4), "map"), "LIDAR_TOP",
                                                Transform(Vector3(1.5, -2.0, 0.25), Quaternion(0.0, 0.0, 0.6, 0.8)))])
    le = parse_tf_message(bytes(store.serialize_cdr(tf, "tf2_msgs/msg/TFMessage")))
    be = parse_tf_message(bytes(store.serialize_cdr(tf, "tf2_msgs/msg/TFMessage", little_endian=False)))
    assert le == be and le.transforms[0].transform.rotation.z == 0.6 and le.transforms[0].header.frame_id == "map"
    info = M.camera_info(7, "CAM_FRONT", np.array([[800.0, 0, 400], [0, 810, 225], [0, 0, 1]]), 800, 450)
    le = parse_camera_info(bytes(store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo")))
    be = parse_camera_info(bytes(store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo", little_endian=False)))
    assert (be.width, be.height, list(be.k), list(be.p), be.header) == (le.width, le.height, list(le.k), list(le.p),
                                                                        le.header)
    assert list(le.k) == [800.0, 0, 400, 0, 810, 225, 0, 0, 1]


def test_every_truncation_of_camera_info_and_tf_is_a_cdr_error_and_huge_lengths_too():
    """Every truncation, and a length far beyond the bytes at every 4-byte position (where it
    lands on a sequence or string length, the case in which rclpy's C type support prints a
    line to stderr): a CdrError naming the message, or, where it lands on a plain number, a
    message that reads."""
    import struct

    from geometry_msgs.msg import TransformStamped
    from sensor_msgs.msg import CameraInfo
    from tf2_msgs.msg import TFMessage

    info = CameraInfo(width=16, height=9, distortion_model="plumb_bob", d=[0.1, 0.0, 0.0, 0.0, 0.0])
    tf = TFMessage(transforms=[TransformStamped(child_frame_id="a"), TransformStamped(child_frame_id="b")])
    for parse, msg, what, lengths in ((parse_camera_info, info, "CameraInfo", 3),
                                      (parse_tf_message, tf, "TFMessage", 5)):
        buf = serialize_message(msg)
        for n in range(len(buf)):                       # down to the last byte (CameraInfo: roi.do_rectify)
            with pytest.raises(CdrError, match=what):
                parse(buf[:n])
        refused = 0
        for pos in range(4, len(buf) - 3, 4):
            try:
                parse(buf[:pos] + struct.pack("<I", 0xFFFFFFF0) + buf[pos + 4:])
            except CdrError as exc:
                assert what in str(exc)
                refused += 1
        assert refused >= lengths           # frame_id, distortion_model, d / transforms, 2 x (frame_id, child)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_fuzz_random_bytes_raise_only_cdr_errors(data):
    for parse in (parse_image, parse_compressed_image, parse_pointcloud2, parse_camera_info, parse_tf_message):
        try:
            parse(b"\x00\x01\x00\x00" + data)
        except CdrError:
            pass
