"""Read a drive bag into synchronised sensor frames, the way the node sees them.

The node's own pieces are used: LiDAR-triggered sync (``ros.sync``), message
conversion (``ros.conversions``), static transforms (``ros.tf_static``) and the model
preprocessing (``data.preprocess``). One frame per PointCloud2 message.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader

from aqr_perception.config import AqrConfig
from aqr_perception.data.preprocess import ModelArrays, build_model_arrays
from aqr_perception.data.typestore import project_typestore
from aqr_perception.ros.conversions import (camera_info_K, compressed_imgmsg_to_cv2, imgmsg_to_cv2,
                                            pointcloud2_to_xyzi)
from aqr_perception.ros.sync import LidarTriggeredSync
from aqr_perception.ros.tf_static import StaticTransforms


@dataclass
class SensorFrame:
    """One LiDAR sweep with its associated cameras (None where stale/missing)."""

    stamp_ns: int
    lidar_frame: str
    points: np.ndarray                       # (N, 4)
    images: list[np.ndarray | None]          # RGB per camera, in camera order
    Ks: list[np.ndarray | None]
    lidar_to_cameras: list[np.ndarray | None]
    stale: dict[str, str]

    def model_arrays(self, input_hw: tuple[int, int]) -> ModelArrays:
        return build_model_arrays(self.points, self.images, self.Ks, self.lidar_to_cameras, input_hw)


def read_frames(bag: Path, cfg: AqrConfig) -> Iterator[SensorFrame]:
    """Yield the drive's frames in time order."""
    node = cfg.node
    store = project_typestore()
    cams = node.camera_names
    image_topics = {node.image_topic_format.format(camera=c): c for c in cams}
    info_topics = {node.camera_info_topic_format.format(camera=c): c for c in cams}
    sync = LidarTriggeredSync(cams, node.sync)
    tfs = StaticTransforms()
    infos: dict[str, object] = {}
    decode = imgmsg_to_cv2 if node.image_transport == "raw" else compressed_imgmsg_to_cv2
    with Reader(bag) as reader:
        for conn, _t, raw in reader.messages():
            topic = conn.topic
            if topic in image_topics:
                msg = store.deserialize_cdr(raw, conn.msgtype)
                sync.add_image(image_topics[topic], msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec,
                               msg)
            elif topic in info_topics:
                infos[info_topics[topic]] = store.deserialize_cdr(raw, conn.msgtype)
            elif topic == "/tf_static":
                tfs.add_message(store.deserialize_cdr(raw, conn.msgtype))
            elif topic == node.lidar_topic:
                cloud = store.deserialize_cdr(raw, conn.msgtype)
                stamp = cloud.header.stamp.sec * 1_000_000_000 + cloud.header.stamp.nanosec
                assoc = sync.associate(stamp)
                images, Ks, exts = [], [], []
                for c in cams:
                    msg, info = assoc.images[c], infos.get(c)
                    T = tfs.lookup(info.header.frame_id, cloud.header.frame_id) if info is not None else None
                    ok = msg is not None and info is not None and T is not None
                    images.append(decode(msg, "rgb8") if ok else None)
                    Ks.append(camera_info_K(info) if ok else None)
                    exts.append(T if ok else None)
                yield SensorFrame(stamp, cloud.header.frame_id, pointcloud2_to_xyzi(cloud), images, Ks, exts,
                                  assoc.stale)


@dataclass
class GroundTruth:
    """GT boxes of one frame in the LiDAR frame: boxes (N, 9), labels (N,), names, lidar points per box."""

    boxes: np.ndarray
    labels: np.ndarray
    names: list[str]
    num_lidar_pts: np.ndarray
    attributes: list[str]


def load_ground_truth(gt_json: Path, classes: list[str]) -> dict[int, GroundTruth]:
    """stamp_ns -> GroundTruth from a drive's ``.gt.json`` (sizes w,l,h -> dx=l, dy=w, dz=h)."""
    data = json.loads(Path(gt_json).read_text())
    out = {}
    for f in data["frames"]:
        rows, labels, names, npts, attrs = [], [], [], [], []
        for b in f["boxes"]:
            w, l, h = b["size"]
            rows.append([*b["lidar"]["center"], l, w, h, b["lidar"]["yaw"], *b["lidar"]["velocity"]])
            labels.append(classes.index(b["detection_name"]))
            names.append(b["detection_name"])
            npts.append(b["num_lidar_pts"])
            attrs.append(b["attribute_name"])
        out[int(f["stamp_ns"])] = GroundTruth(np.array(rows, dtype=np.float64).reshape(-1, 9),
                                              np.array(labels, dtype=np.int64), names,
                                              np.array(npts, dtype=np.int64), attrs)
    return out
