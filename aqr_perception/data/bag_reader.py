"""Read a drive bag into frames the way the node sees them (its own FramePipeline).
One frame per PointCloud2 message; the ground truth is data/ground_truth.py's."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from rosbags.rosbag2 import Reader, ReaderError

from aqr_perception.config import AqrConfig, ConfigError, NodeConfig, one_line
from aqr_perception.data.bag_order import node_pose_wait
from aqr_perception.data.typestore import project_typestore
from aqr_perception.frames.pipeline import FrameInputs, FramePipeline

#: the message types of camera images (raw and compressed)
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def unreadable_bag(bag: Path | str, exc: Exception) -> str:
    """One line saying why rosbags cannot read ``bag``, with what to do for the usual causes."""
    text = one_line(str(exc)) or type(exc).__name__
    hint = ""
    if "profile is not ros2" in text.lower():
        hint = ("; its messages are not ROS 2 messages (Foxglove's nuscenes2mcap, for one, writes protobuf ones): "
                "convert nuScenes with `aqr-perception nuscenes2bag`")
    elif "metadata" in text.lower():
        hint = ("; a rosbag2 folder holds its metadata.yaml beside the .mcap / .db3 files (`ros2 bag reindex` "
                "rebuilds it), or give the path of one ROS 2 .mcap file")
    return f"{bag}: not a readable ROS 2 bag ({text}){hint}"


@contextlib.contextmanager
def open_bag(bag: Path | str) -> Iterator[Reader]:
    """rosbags' Reader over a rosbag2 folder or one ROS 2 .mcap file; what it cannot open
    (another MCAP profile, no metadata.yaml, not a bag at all) is a ConfigError in one line."""
    try:
        reader = Reader(bag)
        reader.open()
    except (ReaderError, OSError) as exc:
        raise ConfigError(unreadable_bag(bag, exc)) from None
    try:
        yield reader
    finally:
        reader.close()


def bag_topics(bag: Path | str) -> dict[str, str]:
    """topic -> message type of ``bag`` (:func:`open_bag`)."""
    with open_bag(bag) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def ground_truth_beside(bag: Path) -> Path:
    """Where a bag's ground truth lives: ``<bag>.gt.json`` beside the bag folder or .mcap file."""
    return bag.with_name(bag.name + ".gt.json")


def drive_pairs(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(bag, ground truth) for each path: a drive (a rosbag2 folder or one ROS 2 .mcap file,
    ``<bag>.gt.json`` beside it) or a folder of drives. ConfigError for a path that is neither."""
    pairs = []
    for path in paths:
        path = Path(path).resolve()             # "." has no name
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder")
        if ground_truth_beside(path).is_file():
            pairs.append((path, ground_truth_beside(path)))
            continue
        found = []
        for gt in sorted(path.glob("*.gt.json")) if path.is_dir() else []:
            bag = gt.with_name(gt.name[: -len(".gt.json")])
            if bag.is_dir() or (bag.suffix == ".mcap" and bag.is_file()):
                found.append((bag, gt))
        if not found:
            raise ConfigError(f"{path}: neither a drive (a bag folder or .mcap file with {path.name}.gt.json "
                              "beside it) nor a folder of drives")
        pairs += found
    if len({bag.name for bag, _ in pairs}) != len(pairs):
        raise ConfigError("two bags of the same name: the per-bag table could not tell them apart")
    return pairs


def check_bag_topics(bag: Path, node_cfg: NodeConfig) -> None:
    """Fail at once (ConfigError naming the topics) when the node settings and the bag's
    topic names disagree, the usual cause being a bag recorded with other names: the bag has
    no cloud on the node's LiDAR topic, or none of the node's camera image topics while it
    has images on others (without this the node would run on LiDAR alone and score lower,
    silently). A bag without some of the node's cameras, or with more image topics than the
    node reads (raw and compressed, another camera), is fine; so is one without images."""
    topics = bag_topics(bag)
    if node_cfg.lidar_topic not in topics:
        clouds = sorted(t for t, ty in topics.items() if ty == "sensor_msgs/msg/PointCloud2")
        raise ConfigError(f"{bag}: no messages on the node's lidar_topic {node_cfg.lidar_topic}; the bag's "
                          f"PointCloud2 topics: {', '.join(clouds) or 'none'} (set node.lidar_topic with --set or "
                          "the node's parameter file with --node-params)")
    wanted = [node_cfg.image_topic_format.format(camera=c) for c in node_cfg.camera_names]
    images = sorted(t for t, ty in topics.items() if ty in IMAGE_TYPES)
    if images and not any(t in topics for t in wanted):
        raise ConfigError(f"{bag}: none of the node's camera image topics ({', '.join(wanted)}) is in the bag, "
                          f"whose images are on {', '.join(images)} (set node.image_topic_format, "
                          "node.camera_names or node.image_transport, or the node's parameter file with "
                          "--node-params)")


def feed_bag(bag: Path, pipeline: FramePipeline, on_cloud) -> None:
    """Feed a bag's messages to ``pipeline`` in bag order, as the node's callbacks would;
    ``on_cloud(cloud)`` is called for every PointCloud2 (after everything before it, and
    after a /tf pose of its instant recorded up to ``sync.camera_wait_s`` later: see
    :func:`~aqr_perception.data.bag_order.pose_first`)."""
    node = pipeline.cfg
    store = project_typestore()
    image_topics = {node.image_topic_format.format(camera=c): c for c in pipeline.cameras}
    info_topics = {node.camera_info_topic_format.format(camera=c): c for c in pipeline.cameras}
    with open_bag(bag) as reader:
        messages = reader.messages()
        if pipeline.multi_sweep:    # a /tf recorded just after its cloud still reaches it, as in the live node
            messages = node_pose_wait(node.lidar_topic, node.sync.camera_wait_s, store)(messages)
        for conn, _t, raw in messages:
            topic = conn.topic
            if topic in image_topics:
                pipeline.on_image(image_topics[topic], store.deserialize_cdr(raw, conn.msgtype))
            elif topic in info_topics:
                pipeline.on_camera_info(info_topics[topic], store.deserialize_cdr(raw, conn.msgtype))
            elif topic == "/tf_static":
                pipeline.on_tf_static(store.deserialize_cdr(raw, conn.msgtype))
            elif topic == "/tf" and pipeline.multi_sweep:
                pipeline.on_tf(store.deserialize_cdr(raw, conn.msgtype))
            elif topic == node.lidar_topic:
                on_cloud(store.deserialize_cdr(raw, conn.msgtype))


def read_frames(bag: Path, cfg: AqrConfig) -> Iterator[FrameInputs]:
    """The drive's frames in time order, assembled exactly as the node assembles them."""
    pipeline = FramePipeline(cfg.node, input_hw=(cfg.model.image.input_height, cfg.model.image.input_width),
                             lidar=cfg.model.lidar, image=cfg.model.image)
    frames: list[FrameInputs] = []
    feed_bag(bag, pipeline, lambda cloud: frames.append(pipeline.assemble(cloud)))
    yield from frames
