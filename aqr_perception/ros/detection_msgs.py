"""Detections (numpy) -> vision_msgs/Detection3DArray and aqr_perception/QueryRouting.

No torch here: the model's decoded output is handed over as numpy arrays.

Box convention (LiDAR frame, one row per box), shared with the model's box coder:
    ``[x, y, z, dx, dy, dz, yaw, vx, vy]``
    x, y, z   box centre (gravity centre, not bottom), m
    dx dy dz  full extent along the box's own x (heading), y and z axes, m
    yaw       heading about +z, rad (0 = box x axis along LiDAR +x)
    vx vy     velocity in the LiDAR frame, m/s

``BoundingBox3D.size`` is (dx, dy, dz), ``center.orientation`` the yaw quaternion.

Each builder has a ``*_cdr`` twin in data/detection_cdr.py that writes the same message
straight to its serialised bytes, which the node publishes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from std_msgs.msg import Header
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from aqr_perception.data.boxes import quaternion_to_yaw, yaw_to_quaternion
from aqr_perception.data.detection_cdr import detection_id, per_layer
from aqr_perception.detections import FrameDetections
from aqr_perception.msg import DetectionRouting, DetectionVelocity, DetectionVelocityArray, QueryRouting
from aqr_perception.stamps import time_to_ns


def to_detection_array(header: Header, det: FrameDetections, class_names: Sequence[str]) -> Detection3DArray:
    """Build the Detection3DArray of one frame (header = the source cloud's header)."""
    out = Detection3DArray(header=header)
    if len(det) == 0:
        return out
    stamp_ns = time_to_ns(header.stamp)
    boxes = np.asarray(det.boxes, dtype=np.float64)
    quats = yaw_to_quaternion(boxes[:, 6])
    for i in range(len(det)):
        d = Detection3D(header=header)
        d.id = detection_id(stamp_ns, int(det.query_index[i]))
        c = d.bbox.center
        c.position.x, c.position.y, c.position.z = (float(v) for v in boxes[i, :3])
        c.orientation.x, c.orientation.y, c.orientation.z, c.orientation.w = (float(v) for v in quats[i])
        d.bbox.size.x, d.bbox.size.y, d.bbox.size.z = (float(v) for v in boxes[i, 3:6])
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = class_names[int(det.labels[i])]
        hyp.hypothesis.score = float(det.scores[i])
        hyp.pose.pose = c
        d.results.append(hyp)
        out.detections.append(d)
    return out


def from_detection_array(msg: Detection3DArray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A Detection3DArray's boxes (N, 7) ``[x, y, z, l, w, h, yaw]`` in its header's frame,
    class ids (the first hypothesis; "" without one) and scores (N,)."""
    n = len(msg.detections)
    boxes = np.zeros((n, 7))
    for i, d in enumerate(msg.detections):
        c, size = d.bbox.center, d.bbox.size
        boxes[i, :6] = [c.position.x, c.position.y, c.position.z, size.x, size.y, size.z]
    if n:
        o = [d.bbox.center.orientation for d in msg.detections]
        boxes[:, 6] = quaternion_to_yaw(np.array([[q.x, q.y, q.z, q.w] for q in o]))
    names = [d.results[0].hypothesis.class_id if d.results else "" for d in msg.detections]
    scores = np.array([d.results[0].hypothesis.score if d.results else 1.0 for d in msg.detections])
    return boxes, names, scores


def to_routing_msg(header: Header, det: FrameDetections, lidar_available: bool,
                   cameras_available: Sequence[str], cameras_masked: Sequence[str]) -> QueryRouting:
    """Build the QueryRouting message matching :func:`to_detection_array` entry by entry."""
    msg = QueryRouting(header=header, lidar_available=bool(lidar_available),
                       cameras_available=list(cameras_available), cameras_masked=list(cameras_masked))
    stamp_ns = time_to_ns(header.stamp)
    lw, cw = per_layer(det.lidar_weight, len(det)), per_layer(det.camera_weight, len(det))
    for i in range(len(det)):
        q = int(det.query_index[i])
        msg.detections.append(DetectionRouting(
            id=detection_id(stamp_ns, q), query_index=q,
            lidar_weight=float(lw[i, -1]), camera_weight=float(cw[i, -1]),
            lidar_weight_per_layer=lw[i].tolist() if lw.shape[1] > 1 else [],
            camera_weight_per_layer=cw[i].tolist() if cw.shape[1] > 1 else []))
    msg.mean_lidar_weight = float(lw[:, -1].mean()) if len(det) else float("nan")
    msg.mean_camera_weight = float(cw[:, -1].mean()) if len(det) else float("nan")
    return msg


def to_velocity_msg(header: Header, det: FrameDetections) -> DetectionVelocityArray:
    """Velocities (vx, vy of each box) matching :func:`to_detection_array` entry by entry."""
    stamp_ns = time_to_ns(header.stamp)
    out = DetectionVelocityArray(header=header)
    for i in range(len(det)):
        v = DetectionVelocity(id=detection_id(stamp_ns, int(det.query_index[i])))
        v.velocity.x, v.velocity.y = float(det.boxes[i, 7]), float(det.boxes[i, 8])
        out.velocities.append(v)
    return out
