"""Detections (numpy) -> the serialised bytes of the node's output messages.

``detection_array_cdr``, ``velocity_cdr`` and ``routing_cdr`` write vision_msgs/
Detection3DArray, aqr_perception/DetectionVelocityArray and aqr_perception/QueryRouting
straight to CDR: exactly the bytes ``serialize_message`` gives for the messages that
ros/detection_msgs.py builds (test/test_messages_wire.py), which the node publishes
through raw publishers. Building and converting ~100 Python Detection3D objects a frame
cost more than the rest of the node's output path.

No ROS message packages here (numpy and frames/cdr.py only), so the output path also
runs where no ROS is installed: bench/model_gpu.py times it on the GPU machine. Boxes are
``FrameDetections.boxes`` (detections.py), ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` in the
LiDAR frame: the pose is the gravity centre and the yaw quaternion, the size (dx, dy, dz).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from aqr_perception.data.boxes import yaw_to_quaternion
from aqr_perception.detections import FrameDetections
from aqr_perception.frames.cdr import CdrWriter
from aqr_perception.stamps import time_to_ns


class StampLike(Protocol):
    sec: int
    nanosec: int


class HeaderLike(Protocol):
    """What is read of a header: std_msgs/Header, rosbags' Header, or any object alike."""

    stamp: StampLike
    frame_id: str


def detection_id(stamp_ns: int, query_index: int) -> str:
    """Per-frame detection id shared by Detection3D.id and DetectionRouting.id."""
    return f"{stamp_ns}:{query_index}"


def per_layer(weights: np.ndarray, n: int) -> np.ndarray:
    """(N, L) float32 router weights; an empty frame gives (0, 1), not a reshape error."""
    w = np.asarray(weights, dtype=np.float32)
    return w.reshape(n, -1) if w.size else np.zeros((n, 1), np.float32)


def _header(w: CdrWriter, header: HeaderLike) -> tuple[int, int, str]:
    stamp = (int(header.stamp.sec), int(header.stamp.nanosec), header.frame_id)
    w.header(*stamp)
    return stamp


def detection_array_cdr(header: HeaderLike, det: FrameDetections, class_names: Sequence[str]) -> bytes:
    """ros/detection_msgs.py's ``to_detection_array``, serialised."""
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


def velocity_cdr(header: HeaderLike, det: FrameDetections) -> bytes:
    """ros/detection_msgs.py's ``to_velocity_msg``, serialised."""
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


def routing_cdr(header: HeaderLike, det: FrameDetections, lidar_available: bool, cameras_available: Sequence[str],
                cameras_masked: Sequence[str]) -> bytes:
    """ros/detection_msgs.py's ``to_routing_msg``, serialised."""
    w = CdrWriter()
    _header(w, header)
    stamp_ns = time_to_ns(header.stamp)
    n = len(det)
    lw, cw = per_layer(det.lidar_weight, n), per_layer(det.camera_weight, n)
    layered = lw.shape[1] > 1
    empty = np.zeros(0, np.float32)
    w.u32(n)
    for i in range(n):
        q = int(det.query_index[i])
        w.string(detection_id(stamp_ns, q))
        w.u32(q)
        w.f32(float(lw[i, -1]), float(cw[i, -1]))
        w.f32_sequence(lw[i] if layered else empty)
        w.f32_sequence(cw[i] if layered else empty)
    w.f32(float(lw[:, -1].mean()) if n else float("nan"), float(cw[:, -1].mean()) if n else float("nan"))
    w.boolean(bool(lidar_available))
    w.string_sequence(list(cameras_available))
    w.string_sequence(list(cameras_masked))
    return w.tobytes()
