"""Read a drive bag into frames the way the node sees them (its own FramePipeline).
One frame per PointCloud2 message; the ground truth is data/ground_truth.py's."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rosbags.rosbag2 import Reader

from aqr_perception.config import AqrConfig
from aqr_perception.data.bag_order import node_pose_wait
from aqr_perception.data.typestore import project_typestore
from aqr_perception.frames.pipeline import FrameInputs, FramePipeline


def feed_bag(bag: Path, pipeline: FramePipeline, on_cloud) -> None:
    """Feed a bag's messages to ``pipeline`` in bag order, as the node's callbacks would;
    ``on_cloud(cloud)`` is called for every PointCloud2 (after everything before it, and
    after a /tf pose of its instant recorded up to ``sync.camera_wait_s`` later: see
    :func:`~aqr_perception.data.bag_order.pose_first`)."""
    node = pipeline.cfg
    store = project_typestore()
    image_topics = {node.image_topic_format.format(camera=c): c for c in pipeline.cameras}
    info_topics = {node.camera_info_topic_format.format(camera=c): c for c in pipeline.cameras}
    with Reader(bag) as reader:
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
