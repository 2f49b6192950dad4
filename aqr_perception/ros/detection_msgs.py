"""Detections (numpy) -> vision_msgs/Detection3DArray and aqr_perception/QueryRouting.

No torch here: the model's decoded output is handed over as numpy arrays.

Box convention (LiDAR frame, one row per box), shared with the model's box coder:
    ``[x, y, z, dx, dy, dz, yaw, vx, vy]``
    x, y, z   box centre (gravity centre, not bottom), m
    dx dy dz  full extent along the box's own x (heading), y and z axes, m
    yaw       heading about +z, rad (0 = box x axis along LiDAR +x)
    vx vy     velocity in the LiDAR frame, m/s

``BoundingBox3D.size`` is (dx, dy, dz), ``center.orientation`` the yaw quaternion.

Each builder has a ``*_cdr`` twin that writes the same message straight to its serialised
bytes (``serialize_message`` of the built message gives exactly these bytes), which the
node publishes: building and converting ~100 Python Detection3D objects a frame cost
more than the rest of the node's output path.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from std_msgs.msg import Header
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from aqr_perception.data.boxes import quaternion_to_yaw, yaw_to_quaternion
from aqr_perception.detections import FrameDetections
from aqr_perception.frames.cdr import CdrWriter
from aqr_perception.msg import DetectionRouting, DetectionVelocity, DetectionVelocityArray, QueryRouting
from aqr_perception.stamps import time_to_ns


def detection_id(stamp_ns: int, query_index: int) -> str:
    """Per-frame detection id shared by Detection3D.id and DetectionRouting.id."""
    return f"{stamp_ns}:{query_index}"


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


def _per_layer(weights: np.ndarray, n: int) -> np.ndarray:
    """(N, L) float32 router weights; an empty frame gives (0, 1), not a reshape error."""
    w = np.asarray(weights, dtype=np.float32)
    return w.reshape(n, -1) if w.size else np.zeros((n, 1), np.float32)


def to_routing_msg(header: Header, det: FrameDetections, lidar_available: bool,
                   cameras_available: Sequence[str], cameras_masked: Sequence[str]) -> QueryRouting:
    """Build the QueryRouting message matching :func:`to_detection_array` entry by entry."""
    msg = QueryRouting(header=header, lidar_available=bool(lidar_available),
                       cameras_available=list(cameras_available), cameras_masked=list(cameras_masked))
    stamp_ns = time_to_ns(header.stamp)
    lw, cw = _per_layer(det.lidar_weight, len(det)), _per_layer(det.camera_weight, len(det))
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


def _header(w: CdrWriter, header: Header) -> tuple[int, int, str]:
    stamp = (int(header.stamp.sec), int(header.stamp.nanosec), header.frame_id)
    w.header(*stamp)
    return stamp


def detection_array_cdr(header: Header, det: FrameDetections, class_names: Sequence[str]) -> bytes:
    """:func:`to_detection_array`, serialised."""
    w = CdrWriter()
    sec, nanosec, frame = _header(w, header)
    n = len(det)
    w.u32(n)
    if n == 0:
        return w.tobytes()
    stamp_ns = time_to_ns(header.stamp)
    boxes = np.asarray(det.boxes, dtype=np.float64)
    # the float64 run after each class id: score, hypothesis pose (position, orientation),
    # its covariance (36 zeros), bbox centre (the same pose), bbox size
    run = np.zeros((n, 1 + 7 + 36 + 7 + 3))
    run[:, 0] = np.asarray(det.scores, dtype=np.float64)
    run[:, 1:4], run[:, 4:8] = boxes[:, :3], yaw_to_quaternion(boxes[:, 6])
    run[:, 44:51] = run[:, 1:8]
    run[:, 51:54] = boxes[:, 3:6]
    for i in range(n):
        w.header(sec, nanosec, frame)
        w.u32(1)                                                   # one hypothesis
        w.string(class_names[int(det.labels[i])])
        w.f64_block(run[i])
        w.string(detection_id(stamp_ns, int(det.query_index[i])))
    return w.tobytes()


def velocity_cdr(header: Header, det: FrameDetections) -> bytes:
    """:func:`to_velocity_msg`, serialised."""
    w = CdrWriter()
    _header(w, header)
    stamp_ns = time_to_ns(header.stamp)
    w.u32(len(det))
    vel = np.zeros((len(det), 3))
    vel[:, :2] = np.asarray(det.boxes, dtype=np.float64)[:, 7:9] if len(det) else 0.0
    for i in range(len(det)):
        w.string(detection_id(stamp_ns, int(det.query_index[i])))
        w.f64_block(vel[i])
    return w.tobytes()


def routing_cdr(header: Header, det: FrameDetections, lidar_available: bool, cameras_available: Sequence[str],
                cameras_masked: Sequence[str]) -> bytes:
    """:func:`to_routing_msg`, serialised."""
    w = CdrWriter()
    _header(w, header)
    stamp_ns = time_to_ns(header.stamp)
    n = len(det)
    lw, cw = _per_layer(det.lidar_weight, n), _per_layer(det.camera_weight, n)
    per_layer = lw.shape[1] > 1
    empty = np.zeros(0, np.float32)
    w.u32(n)
    for i in range(n):
        q = int(det.query_index[i])
        w.string(detection_id(stamp_ns, q))
        w.u32(q)
        w.f32(float(lw[i, -1]), float(cw[i, -1]))
        w.f32_sequence(lw[i] if per_layer else empty)
        w.f32_sequence(cw[i] if per_layer else empty)
    w.f32(float(lw[:, -1].mean()) if n else float("nan"), float(cw[:, -1].mean()) if n else float("nan"))
    w.boolean(bool(lidar_available))
    w.string_sequence(list(cameras_available))
    w.string_sequence(list(cameras_masked))
    return w.tobytes()
