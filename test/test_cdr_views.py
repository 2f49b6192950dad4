"""Zero-copy views of serialised Image / CompressedImage / PointCloud2 (the node's raw
subscriptions) against rclpy's own deserialisation and rosbags' (big endian)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

from aqr_perception.data import rosbag_msgs as M
from aqr_perception.data.typestore import project_typestore
from aqr_perception.frames.cdr import CdrError, parse_compressed_image, parse_image, parse_pointcloud2


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


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_fuzz_random_bytes_raise_only_cdr_errors(data):
    for parse in (parse_image, parse_compressed_image, parse_pointcloud2):
        try:
            parse(b"\x00\x01\x00\x00" + data)
        except CdrError:
            pass
