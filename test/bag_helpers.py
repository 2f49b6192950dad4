"""Bags rewritten for tests (rosbags reader/writer)."""


def tf_after_clouds(src, dst):
    """Copy a drive bag with every /tf message recorded 1 us after the cloud of its instant
    (as LiDAR odometry would publish it); everything else keeps its receive time."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from aqr_perception.data.typestore import project_typestore

    with Reader(src) as reader:
        msgs = [(c.topic, c.msgtype, t + (1000 if c.topic == "/tf" else 0), i, bytes(raw))
                for i, (c, t, raw) in enumerate(reader.messages())]
    msgs.sort(key=lambda m: (m[2], m[3]))
    cloud_at = {t: k for k, (topic, _m, t, _i, _r) in enumerate(msgs) if topic == "/LIDAR_TOP"}
    tf_at = [(t - 1000, k) for k, (topic, _m, t, _i, _r) in enumerate(msgs) if topic == "/tf"]
    assert tf_at and all(k > cloud_at[t] for t, k in tf_at)
    store, conns = project_typestore(), {}
    with Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, msgtype, t, _i, raw in msgs:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[topic], t, raw)
    return dst


def rename_topic(src, dst, old: str, new: str, clouds: int | None = None):
    """Copy a drive bag with topic ``old`` renamed ``new`` (as a user's driver names it);
    with ``clouds``, only the messages before the (clouds+1)-th message on ``old``."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from aqr_perception.data.typestore import project_typestore

    store, conns, seen = project_typestore(), {}, 0
    with Reader(src) as reader, Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for conn, t, raw in reader.messages():
            if conn.topic == old:
                seen += 1
                if clouds is not None and seen > clouds:
                    break
            topic = new if conn.topic == old else conn.topic
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, conn.msgtype, typestore=store)
            writer.write(conns[topic], t, bytes(raw))
    return dst


def rewrite_storage(src, dst, storage: str, compression: str = "none", clouds: int | None = None,
                    cloud_topic: str = "/LIDAR_TOP"):
    """Copy a drive bag as another recorder writes it: ``storage`` "sqlite3" or "mcap",
    ``compression`` "none", "file" or "message" (zstd, as ``ros2 bag record
    --compression-mode ... --compression-format zstd``); with ``clouds``, only the messages
    before the (clouds+1)-th cloud."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer

    from aqr_perception.data.typestore import project_typestore

    store, conns, seen = project_typestore(), {}, 0
    writer = Writer(dst, version=8, storage_plugin=StoragePlugin[storage.upper()])
    if compression != "none":
        writer.set_compression(CompressionMode[compression.upper()], CompressionFormat.ZSTD)
    with Reader(src) as reader, writer:
        for conn, t, raw in reader.messages():
            if conn.topic == cloud_topic:
                seen += 1
                if clouds is not None and seen > clouds:
                    break
            if conn.topic not in conns:
                conns[conn.topic] = writer.add_connection(conn.topic, conn.msgtype, typestore=store)
            writer.write(conns[conn.topic], t, bytes(raw))
    return dst


#: a message type of a vendor's package, installed nowhere (as a real vehicle's bag holds some)
VENDOR_TYPE = "vendor_can_msgs/msg/VehicleStatus"


def with_vendor_topic(src, dst, topic: str = "/vehicle/status", clouds: int | None = None,
                      cloud_topic: str = "/LIDAR_TOP"):
    """Copy a drive bag with a ``VENDOR_TYPE`` message on ``topic`` beside each cloud (the
    bag keeps its definition, as MCAP does); with ``clouds``, only the first clouds' messages."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from aqr_perception.data.typestore import project_typestore

    store, conns, seen = get_typestore(Stores.ROS2_KILTED), {}, 0     # the project's cached one is left as it is
    store.register(dict(project_typestore().fielddefs))
    store.register(get_types_from_msg("std_msgs/Header header\nuint8 gear\nfloat32 speed_mps\n", VENDOR_TYPE))
    header, stamp, status = (store.types[t] for t in ("std_msgs/msg/Header", "builtin_interfaces/msg/Time",
                                                       VENDOR_TYPE))
    with Reader(src) as reader, Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns[topic] = writer.add_connection(topic, VENDOR_TYPE, typestore=store)
        for conn, t, raw in reader.messages():
            if conn.topic == cloud_topic:
                seen += 1
                if clouds is not None and seen > clouds:
                    break
                msg = status(header=header(stamp=stamp(sec=t // 10**9, nanosec=t % 10**9), frame_id="base_link"),
                             gear=3, speed_mps=5.0)
                writer.write(conns[topic], t, store.serialize_cdr(msg, VENDOR_TYPE))
            if conn.topic not in conns:
                conns[conn.topic] = writer.add_connection(conn.topic, conn.msgtype, typestore=store)
            writer.write(conns[conn.topic], t, bytes(raw))
    return dst
