"""A recorded bag under a sensor corruption: a corrupted copy, for ``robustness --bag``.

Every message is copied as recorded (a topic of a type the project does not know with the
definition the bag holds; one without any, which the pipeline never reads, is left out),
except what the condition changes
(:mod:`aqr_perception.data.corruptions`):

- ``no_lidar``: each cloud keeps its header and fields, with no points (the node sees the
  LiDAR deliver nothing);
- ``reduced_lidar``: each cloud keeps every ``synth.reduced_lidar_keep_every``-th beam of
  its ``ring`` field and drops ``synth.reduced_lidar_drop`` of those points;
- ``no_intensity``: the intensity field of every point is zero;
- ``no_cameras`` / ``one_camera_missing``: the cameras' image and camera_info topics are
  left out (``synth.missing_camera``);
- ``dark``: every image darkened, JPEGs re-encoded at ``synth.jpeg_quality``;
- ``time_offset``: image and camera_info stamps moved by ``synth.time_offset_s``.

Fog needs each pixel's depth, which a recording does not have. The ground truth is not
touched: a corruption degrades the sensors, not the scene.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from aqr_perception.config import AqrConfig, ConfigError
from aqr_perception.data.corruptions import CONDITIONS, NEEDS_DEPTH, cameras_removed, darken, reduced_lidar_keep
from aqr_perception.data.typestore import project_typestore
from aqr_perception.stamps import header_ns, ns_to_sec_nanosec

#: sensor_msgs/PointField datatype -> numpy scalar type
POINT_FIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
BAG_CONDITIONS = tuple(c for c in CONDITIONS if c not in NEEDS_DEPTH)


def _field(cloud, name: str):
    return next((f for f in cloud.fields if f.name == name), None)


def _rows(cloud) -> np.ndarray:
    """(N, point_step) uint8: the cloud's points, row padding removed."""
    n, step = cloud.width * cloud.height, cloud.point_step
    data = np.asarray(cloud.data, dtype=np.uint8)
    if cloud.row_step != cloud.width * step:        # rows padded: take each row's points
        data = data.reshape(cloud.height, cloud.row_step)[:, : cloud.width * step]
    return data.reshape(n, step) if n else np.zeros((0, step), np.uint8)


def _field_values(cloud, rows: np.ndarray, name: str) -> np.ndarray:
    f = _field(cloud, name)
    dtype = np.dtype(POINT_FIELD_DTYPES[f.datatype]).newbyteorder(">" if cloud.is_bigendian else "<")
    return rows[:, f.offset: f.offset + dtype.itemsize].copy().view(dtype).reshape(-1)


def _with_rows(cloud, rows: np.ndarray):
    cloud.height, cloud.width = 1, len(rows)
    cloud.row_step = cloud.point_step * len(rows)
    cloud.data = np.ascontiguousarray(rows).reshape(-1)
    return cloud


def corrupt_cloud(cloud, condition: str, cfg: AqrConfig, rng: np.random.Generator, where: str = "cloud"):
    """The PointCloud2 (rosbags message) under ``condition``; ConfigError naming ``where``
    when the cloud lacks the field the condition needs."""
    s = cfg.synth
    rows = _rows(cloud)
    if condition == "no_lidar":
        return _with_rows(cloud, rows[:0])
    if condition == "no_intensity":
        f = _field(cloud, "intensity")
        if f is None:
            return cloud                             # nothing to remove
        rows = rows.copy()
        rows[:, f.offset: f.offset + np.dtype(POINT_FIELD_DTYPES[f.datatype]).itemsize] = 0   # 0 in any type
        return _with_rows(cloud, rows)
    if condition == "reduced_lidar":
        if _field(cloud, "ring") is None:
            raise ConfigError(f"{where}: reduced_lidar keeps beams by the cloud's 'ring' field, which it lacks")
        ring = _field_values(cloud, rows, "ring").astype(np.int64)
        return _with_rows(cloud, rows[reduced_lidar_keep(ring, s.reduced_lidar_keep_every, s.reduced_lidar_drop,
                                                         rng)])
    return cloud


def _darken_image(msg, msgtype: str, cfg: AqrConfig, rng: np.random.Generator, where: str):
    if msgtype == "sensor_msgs/msg/CompressedImage":
        bgr = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConfigError(f"{where}: an image that does not decode ({msg.format!r})")
        ok, buf = cv2.imencode(".jpg", darken(bgr, rng), [cv2.IMWRITE_JPEG_QUALITY, cfg.synth.jpeg_quality])
        msg.data = buf.reshape(-1)
        msg.format = "bgr8; jpeg compressed bgr8"
        return msg
    if not (msg.encoding.endswith("8") or msg.encoding.startswith("8U")):      # rgb8, mono8, bgra8, 8UC3
        raise ConfigError(f"{where}: dark darkens 8-bit images, not {msg.encoding}")
    msg.data = darken(np.asarray(msg.data, dtype=np.uint8), rng)
    return msg


def _shift_stamp(msg, shift_ns: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(header_ns(msg) + shift_ns)
    return msg


def check_bag_condition(condition: str) -> None:
    """ConfigError unless a recorded bag can be put under ``condition``."""
    if condition not in BAG_CONDITIONS:
        raise ConfigError(f"{condition}: a recorded bag takes {', '.join(BAG_CONDITIONS)}"
                          + (f" ({condition} needs the scene's depth, which only the synthetic drives have)"
                             if condition in NEEDS_DEPTH else ""))


def _copy_connection(writer: Writer, conn: Connection, store: Typestore) -> Connection | None:
    """``conn`` in ``writer``: a type the project knows from its typestore, another (a vendor's
    package in a vehicle's bag) with the definition the bag holds; None for one of neither
    (a bag that stores no definitions, as Humble's sqlite3 bags, or one rosbags cannot
    read): the copy leaves it out, and the pipeline never reads it."""
    if conn.msgtype in store.types:
        return writer.add_connection(conn.topic, conn.msgtype, typestore=store)
    if conn.msgdef.format != MessageDefinitionFormat.MSG or not conn.msgdef.data:
        return None
    if conn.digest.startswith("RIHS01_"):
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data, rihs01=conn.digest)
    # no type hash recorded (one .mcap file, a Humble-era metadata.yaml): the definition's own
    own = get_typestore(Stores.EMPTY)
    try:
        own.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))
        return writer.add_connection(conn.topic, conn.msgtype, typestore=own)
    except (TypesysError, KeyError):            # a definition rosbags cannot read: left out, as without one
        return None


def corrupt_bag(src: Path, dst: Path, condition: str, cfg: AqrConfig, seed: int = 0) -> dict[str, int]:
    """Write ``dst`` (rosbag2, MCAP): ``src`` under ``condition``, deterministic in ``seed``.
    Topic names from ``cfg.node``. Returns the messages written per topic."""
    check_bag_condition(condition)
    node, store = cfg.node, project_typestore()
    rng = np.random.default_rng([seed, 1])
    gone = cameras_removed(condition, list(node.camera_names), cfg.synth.missing_camera)
    camera_topics = {node.image_topic_format.format(camera=c): c for c in node.camera_names}
    info_topics = {node.camera_info_topic_format.format(camera=c): c for c in node.camera_names}
    dropped = {t for t, c in {**camera_topics, **info_topics}.items() if c in gone}
    shift = round(cfg.synth.time_offset_s * 1e9) if condition == "time_offset" else 0
    written: dict[str, int] = {}
    with Reader(src) as reader, Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.id: _copy_connection(writer, c, store) for c in reader.connections if c.topic not in dropped}
        conns = {cid: conn for cid, conn in conns.items() if conn is not None}
        for conn, stamp, raw in reader.messages(connections=[c for c in reader.connections if c.id in conns]):
            topic, msgtype, out = conn.topic, conn.msgtype, raw
            where = f"{src.name} {topic}"
            changes_cloud = topic == node.lidar_topic and condition in ("no_lidar", "no_intensity", "reduced_lidar")
            changes_image = topic in camera_topics and condition in ("dark", "time_offset")
            if changes_cloud or changes_image or (shift and topic in info_topics):
                msg = store.deserialize_cdr(raw, msgtype)
                if changes_cloud:
                    msg = corrupt_cloud(msg, condition, cfg, rng, where)
                elif condition == "dark":
                    msg = _darken_image(msg, msgtype, cfg, rng, where)
                else:
                    msg = _shift_stamp(msg, shift)
                out = store.serialize_cdr(msg, msgtype)
            writer.write(conns[conn.id], stamp, bytes(out))
            written[topic] = written.get(topic, 0) + 1
    return written
