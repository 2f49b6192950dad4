"""Build ROS messages as rosbags typestore objects (for writing bags without rclpy).

numpy in, rosbags message objects out; serialised with ``typestore.serialize_cdr``.
The byte layouts are the standard ones (the tests decode them with rclpy).
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from aqr_perception.data.typestore import project_typestore
from aqr_perception.stamps import ns_to_sec_nanosec

#: sensor_msgs/PointField datatypes
FLOAT32, UINT16 = 7, 4


def _T(name: str):
    return project_typestore().types[name]


def header(stamp_ns: int, frame_id: str):
    Time = _T("builtin_interfaces/msg/Time")
    return _T("std_msgs/msg/Header")(stamp=Time(*ns_to_sec_nanosec(stamp_ns)), frame_id=frame_id)


def pointcloud2(stamp_ns: int, frame_id: str, points: np.ndarray, ring: np.ndarray | None = None,
                ring_datatype: int = UINT16):
    """(N, 4) float ``[x, y, z, intensity]`` (+ ring) -> PointCloud2 (point_step 16, or 18 with a
    uint16 ring, 20 with a float32 one: the nuScenes converters' layout)."""
    PF = _T("sensor_msgs/msg/PointField")
    fields = [PF(name=n, offset=4 * i, datatype=FLOAT32, count=1) for i, n in enumerate("x y z intensity".split())]
    dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")]
    if ring is not None:
        fields.append(PF(name="ring", offset=16, datatype=ring_datatype, count=1))
        dtype.append(("ring", "<f4" if ring_datatype == FLOAT32 else "<u2"))
    arr = np.zeros(points.shape[0], dtype=dtype)
    for i, n in enumerate("x y z intensity".split()):
        arr[n] = points[:, i]
    if ring is not None:
        arr["ring"] = ring
    step = arr.dtype.itemsize
    return _T("sensor_msgs/msg/PointCloud2")(
        header=header(stamp_ns, frame_id), height=1, width=int(points.shape[0]), fields=fields,
        is_bigendian=False, point_step=step, row_step=step * int(points.shape[0]),
        data=np.frombuffer(arr.tobytes(), dtype=np.uint8), is_dense=True)


def compressed_image(stamp_ns: int, frame_id: str, rgb: np.ndarray, quality: int = 85):
    """(H, W, 3) uint8 RGB -> JPEG CompressedImage (image_transport's format string)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return _T("sensor_msgs/msg/CompressedImage")(header=header(stamp_ns, frame_id),
                                                 format="bgr8; jpeg compressed bgr8", data=buf.reshape(-1))


def jpeg_image(stamp_ns: int, frame_id: str, data: bytes):
    """JPEG bytes as they are (not re-encoded) -> CompressedImage."""
    return _T("sensor_msgs/msg/CompressedImage")(header=header(stamp_ns, frame_id), format="jpeg",
                                                 data=np.frombuffer(data, dtype=np.uint8))


def raw_image(stamp_ns: int, frame_id: str, rgb: np.ndarray):
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    h, w = rgb.shape[:2]
    return _T("sensor_msgs/msg/Image")(header=header(stamp_ns, frame_id), height=h, width=w, encoding="rgb8",
                                       is_bigendian=0, step=3 * w,
                                       data=np.ascontiguousarray(rgb).reshape(-1))


def camera_info(stamp_ns: int, frame_id: str, K: np.ndarray, width: int, height: int):
    """Pinhole CameraInfo for an undistorted (rectified) image."""
    P = np.zeros((3, 4))
    P[:, :3] = K
    RoI = _T("sensor_msgs/msg/RegionOfInterest")
    return _T("sensor_msgs/msg/CameraInfo")(
        header=header(stamp_ns, frame_id), height=height, width=width, distortion_model="plumb_bob",
        d=np.zeros(5), k=np.asarray(K, dtype=np.float64).reshape(-1), r=np.eye(3).reshape(-1),
        p=P.reshape(-1), binning_x=0, binning_y=0,
        roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def transform_stamped(stamp_ns: int, parent: str, child: str, T: np.ndarray):
    """(4, 4) child -> parent transform as geometry_msgs/TransformStamped."""
    q = Rotation.from_matrix(T[:3, :3]).as_quat()  # x, y, z, w
    V3, Q = _T("geometry_msgs/msg/Vector3"), _T("geometry_msgs/msg/Quaternion")
    tf = _T("geometry_msgs/msg/Transform")(translation=V3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                                           rotation=Q(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
    return _T("geometry_msgs/msg/TransformStamped")(header=header(stamp_ns, parent), child_frame_id=child,
                                                    transform=tf)


def tf_message(transforms: list):
    return _T("tf2_msgs/msg/TFMessage")(transforms=transforms)


def detection_array(stamp_ns: int, frame_id: str, boxes: np.ndarray, class_names: list[str], ids: list[str],
                    scores: np.ndarray | None = None):
    """(N, 9) boxes -> vision_msgs/Detection3DArray (size = dx, dy, dz; yaw quaternion)."""
    T = _T
    hdr = header(stamp_ns, frame_id)
    dets = []
    for i in range(boxes.shape[0]):
        b = boxes[i]
        pose = T("geometry_msgs/msg/Pose")(
            position=T("geometry_msgs/msg/Point")(x=float(b[0]), y=float(b[1]), z=float(b[2])),
            orientation=T("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=float(np.sin(b[6] / 2)),
                                                           w=float(np.cos(b[6] / 2))))
        hyp = T("vision_msgs/msg/ObjectHypothesisWithPose")(
            hypothesis=T("vision_msgs/msg/ObjectHypothesis")(class_id=class_names[i],
                                                             score=1.0 if scores is None else float(scores[i])),
            pose=T("geometry_msgs/msg/PoseWithCovariance")(pose=pose, covariance=np.zeros(36)))
        dets.append(T("vision_msgs/msg/Detection3D")(
            header=hdr, results=[hyp], id=ids[i],
            bbox=T("vision_msgs/msg/BoundingBox3D")(center=pose, size=T("geometry_msgs/msg/Vector3")(
                x=float(b[3]), y=float(b[4]), z=float(b[5])))))
    return T("vision_msgs/msg/Detection3DArray")(header=hdr, detections=dets)


def velocity_array(stamp_ns: int, frame_id: str, boxes: np.ndarray, ids: list[str]):
    """(N, 9) boxes -> aqr_perception/DetectionVelocityArray (vx, vy of each box)."""
    V3 = _T("geometry_msgs/msg/Vector3")
    entries = [_T("aqr_perception/msg/DetectionVelocity")(id=ids[i], velocity=V3(x=float(boxes[i, 7]),
                                                                                 y=float(boxes[i, 8]), z=0.0))
               for i in range(boxes.shape[0])]
    return _T("aqr_perception/msg/DetectionVelocityArray")(header=header(stamp_ns, frame_id), velocities=entries)
