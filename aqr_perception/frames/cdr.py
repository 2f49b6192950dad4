"""Zero-copy views of serialised sensor messages (the node's raw subscriptions).

rclpy turns a received ``sensor_msgs/Image`` of 4.3 MB into Python objects (an
``array.array`` copy of the pixels) before the callback runs: ~1.7 ms per image on the
dev machine. A raw subscription (``raw=True``) hands over the serialised CDR bytes
instead; these functions read the few scalar fields with ``struct`` and expose ``data``
as a numpy view into those bytes, so the pixels and points are never copied again.
They stand in for rclpy's typed deserialisation of Image, CompressedImage and
PointCloud2; CameraInfo and TFMessage are read the same way (small, but a malformed one
through rclpy also makes its C type support print a line to stderr per sample, outside the
node's throttled log).

The views carry the message's field names (``header.stamp.sec``, ``height``, ``encoding``,
``fields[i].offset`` ...), so everything downstream reads them as it reads rclpy
messages. Encoding: XCDR1 (plain CDR), as rmw_fastrtps writes ROS 2 messages; the
4-byte encapsulation header says little or big endian, and alignment counts from the
byte after it. A buffer that does not parse raises :class:`CdrError` naming the field.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

_ENCAPSULATION = {b"\x00\x00": ">", b"\x00\x01": "<"}   # CDR_BE, CDR_LE (options bytes follow)


class CdrError(ValueError):
    """The bytes are not a well-formed serialised message of the expected type."""


@dataclass
class Time:
    sec: int
    nanosec: int


@dataclass
class Header:
    stamp: Time
    frame_id: str


@dataclass
class PointField:
    name: str
    offset: int
    datatype: int
    count: int


@dataclass
class ImageView:
    """``sensor_msgs/Image`` with ``data`` a uint8 view into the received bytes."""

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray


@dataclass
class CompressedImageView:
    """``sensor_msgs/CompressedImage`` with ``data`` a uint8 view into the received bytes."""

    header: Header
    format: str
    data: np.ndarray


@dataclass
class PointCloud2View:
    """``sensor_msgs/PointCloud2`` with ``data`` a uint8 view into the received bytes."""

    header: Header
    height: int
    width: int
    fields: list[PointField] = field(default_factory=list)
    is_bigendian: bool = False
    point_step: int = 0
    row_step: int = 0
    data: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    is_dense: bool = False


@dataclass
class Vector3:
    """``geometry_msgs/Vector3`` (a translation in m)."""

    x: float
    y: float
    z: float


@dataclass
class Quaternion:
    """``geometry_msgs/Quaternion`` (x, y, z, w), as sent: not normalised here."""

    x: float
    y: float
    z: float
    w: float


@dataclass
class Transform:
    """``geometry_msgs/Transform``: the child frame's pose in the parent frame."""

    translation: Vector3
    rotation: Quaternion


@dataclass
class TransformStamped:
    """``geometry_msgs/TransformStamped``: ``header.frame_id`` is the parent frame."""

    header: Header
    child_frame_id: str
    transform: Transform


@dataclass
class TFMessageView:
    """``tf2_msgs/TFMessage``."""

    transforms: list[TransformStamped]


@dataclass
class RegionOfInterest:
    """``sensor_msgs/RegionOfInterest`` (pixels)."""

    x_offset: int
    y_offset: int
    height: int
    width: int
    do_rectify: bool


@dataclass
class CameraInfoView:
    """``sensor_msgs/CameraInfo``; ``d``, ``k`` (9), ``r`` (9), ``p`` (12) as float64 arrays."""

    header: Header
    height: int
    width: int
    distortion_model: str
    d: np.ndarray
    k: np.ndarray
    r: np.ndarray
    p: np.ndarray
    binning_x: int
    binning_y: int
    roi: RegionOfInterest


class _Reader:
    """Sequential CDR reader over ``buf`` (bytes-like), positions relative to the body."""

    def __init__(self, buf, what: str) -> None:
        self.buf = memoryview(buf).cast("B")
        self.what = what
        if len(self.buf) < 4:
            raise CdrError(f"{what}: {len(self.buf)} bytes, shorter than the CDR encapsulation header")
        order = _ENCAPSULATION.get(bytes(self.buf[:2]))
        if order is None:
            raise CdrError(f"{what}: unknown CDR encapsulation {bytes(self.buf[:4]).hex()} (expected plain CDR)")
        self.order = order
        self.pos = 4

    def _take(self, size: int, align: int, name: str) -> int:
        start = 4 + ((self.pos - 4 + align - 1) // align) * align
        end = start + size
        if end > len(self.buf):
            raise CdrError(f"{self.what}: truncated at {name} ({len(self.buf)} bytes, {name} needs {end})")
        self.pos = end
        return start

    def u8(self, name: str) -> int:
        return self.buf[self._take(1, 1, name)]

    def u32(self, name: str) -> int:
        return struct.unpack_from(self.order + "I", self.buf, self._take(4, 4, name))[0]

    def i32(self, name: str) -> int:
        return struct.unpack_from(self.order + "i", self.buf, self._take(4, 4, name))[0]

    def string(self, name: str) -> str:
        n = self.u32(name)
        if n == 0:            # some writers send an empty string as length 0
            return ""
        start = self._take(n, 1, name)
        raw = bytes(self.buf[start:start + n])
        if raw[-1:] != b"\x00":
            raise CdrError(f"{self.what}: {name} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise CdrError(f"{self.what}: {name} is not UTF-8") from None

    def f64s(self, n: int, name: str) -> np.ndarray:
        """``n`` float64 (8-aligned, as XCDR1 aligns them), copied out of the buffer."""
        start = self._take(8 * n, 8 if n else 1, name)
        return np.frombuffer(self.buf, dtype=self.order + "f8", count=n, offset=start).astype(np.float64)

    def count(self, name: str, min_size: int) -> int:
        """A sequence length that the remaining bytes can hold at ``min_size`` bytes an element."""
        n = self.u32(name)
        if n * min_size > len(self.buf) - self.pos:
            raise CdrError(f"{self.what}: {name} declares {n} elements in {len(self.buf) - self.pos} remaining bytes")
        return n

    def octets(self, name: str) -> np.ndarray:
        n = self.u32(name)
        start = self._take(n, 1, name)
        return np.frombuffer(self.buf, dtype=np.uint8, count=n, offset=start)

    def header(self) -> Header:
        sec = self.i32("header.stamp.sec")
        nanosec = self.u32("header.stamp.nanosec")
        return Header(Time(sec, nanosec), self.string("header.frame_id"))


def parse_image(buf) -> ImageView:
    """Serialised ``sensor_msgs/msg/Image`` -> :class:`ImageView` (no pixel copy)."""
    r = _Reader(buf, "sensor_msgs/Image")
    header = r.header()
    height, width = r.u32("height"), r.u32("width")
    encoding = r.string("encoding")
    big = r.u8("is_bigendian")
    step = r.u32("step")
    return ImageView(header, height, width, encoding, big, step, r.octets("data"))


def parse_compressed_image(buf) -> CompressedImageView:
    """Serialised ``sensor_msgs/msg/CompressedImage`` -> :class:`CompressedImageView`."""
    r = _Reader(buf, "sensor_msgs/CompressedImage")
    header = r.header()
    fmt = r.string("format")
    return CompressedImageView(header, fmt, r.octets("data"))


def parse_pointcloud2(buf) -> PointCloud2View:
    """Serialised ``sensor_msgs/msg/PointCloud2`` -> :class:`PointCloud2View` (no point copy)."""
    r = _Reader(buf, "sensor_msgs/PointCloud2")
    header = r.header()
    height, width = r.u32("height"), r.u32("width")
    n_fields = r.u32("fields")
    if n_fields > len(r.buf):
        raise CdrError(f"{r.what}: {n_fields} fields declared in {len(r.buf)} bytes")
    fields = []
    for i in range(n_fields):
        name = r.string(f"fields[{i}].name")
        fields.append(PointField(name, r.u32(f"fields[{i}].offset"), r.u8(f"fields[{i}].datatype"),
                                 r.u32(f"fields[{i}].count")))
    big = bool(r.u8("is_bigendian"))
    point_step, row_step = r.u32("point_step"), r.u32("row_step")
    data = r.octets("data")
    dense = bool(r.u8("is_dense"))
    return PointCloud2View(header, height, width, fields, big, point_step, row_step, data, dense)


#: the smallest serialised TransformStamped: stamp (8), two string lengths (8), 7 float64 (56)
_TRANSFORM_STAMPED_MIN_BYTES = 8 + 8 + 7 * 8


def parse_camera_info(buf) -> CameraInfoView:
    """Serialised ``sensor_msgs/msg/CameraInfo`` -> :class:`CameraInfoView`."""
    r = _Reader(buf, "sensor_msgs/CameraInfo")
    header = r.header()
    height, width = r.u32("height"), r.u32("width")
    model = r.string("distortion_model")
    d = r.f64s(r.count("d", 8), "d")
    k, rect, p = r.f64s(9, "k"), r.f64s(9, "r"), r.f64s(12, "p")
    bx, by = r.u32("binning_x"), r.u32("binning_y")
    roi = RegionOfInterest(r.u32("roi.x_offset"), r.u32("roi.y_offset"), r.u32("roi.height"), r.u32("roi.width"),
                           bool(r.u8("roi.do_rectify")))
    return CameraInfoView(header, height, width, model, d, k, rect, p, bx, by, roi)


def parse_tf_message(buf) -> TFMessageView:
    """Serialised ``tf2_msgs/msg/TFMessage`` -> :class:`TFMessageView`."""
    r = _Reader(buf, "tf2_msgs/TFMessage")
    transforms = []
    for i in range(r.count("transforms", _TRANSFORM_STAMPED_MIN_BYTES)):
        header = r.header()
        child = r.string(f"transforms[{i}].child_frame_id")
        t = r.f64s(7, f"transforms[{i}].transform")
        transforms.append(TransformStamped(header, child, Transform(Vector3(*map(float, t[:3])),
                                                                    Quaternion(*map(float, t[3:])))))
    return TFMessageView(transforms)


class CdrWriter:
    """Sequential little-endian XCDR1 writer (the encoding rmw_fastrtps publishes), for
    messages the node builds every frame: bytes from here go to ``Publisher.publish``
    as a serialised message, skipping the Python message objects and their conversion.
    Alignment counts from the byte after the 4-byte encapsulation header."""

    def __init__(self) -> None:
        self.buf = bytearray(b"\x00\x01\x00\x00")

    def _align(self, n: int) -> None:
        pad = -(len(self.buf) - 4) % n
        if pad:
            self.buf += bytes(pad)

    def boolean(self, v: bool) -> None:
        self.buf.append(1 if v else 0)

    def u32(self, v: int) -> None:
        self._align(4)
        self.buf += struct.pack("<I", v)

    def i32(self, *values: int) -> None:
        self._align(4)
        self.buf += struct.pack(f"<{len(values)}i", *values)

    def header(self, sec: int, nanosec: int, frame_id: str) -> None:
        self._align(4)
        self.buf += struct.pack("<iI", sec, nanosec)
        self.string(frame_id)

    def string(self, s: str) -> None:
        raw = s.encode("utf-8")
        self.u32(len(raw) + 1)
        self.buf += raw
        self.buf.append(0)

    def f32(self, *values: float) -> None:
        self._align(4)
        self.buf += struct.pack(f"<{len(values)}f", *values)

    def f64(self, *values: float) -> None:
        self._align(8)
        self.buf += struct.pack(f"<{len(values)}d", *values)

    def f64_block(self, values: np.ndarray) -> None:
        """A run of float64 (fixed arrays, consecutive fields) from an array."""
        self._align(8)
        self.buf += np.ascontiguousarray(values, dtype="<f8").tobytes()

    def f32_sequence(self, values: np.ndarray) -> None:
        self.u32(len(values))
        if len(values):
            self.buf += np.ascontiguousarray(values, dtype="<f4").tobytes()

    def string_sequence(self, items) -> None:
        self.u32(len(items))
        for s in items:
            self.string(s)

    def tobytes(self) -> bytes:
        return bytes(self.buf)
