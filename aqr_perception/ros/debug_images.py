"""Per-camera debug images: the model's input view of each camera with the published boxes
projected (what the detector saw, and where it put the objects).

The image is the one the model ran on (resized and cropped to the model input), so the
projection uses the same ``lidar2img`` as the model, which checks the calibration too: a
box that does not sit on its object in this view points at wrong extrinsics or intrinsics.
Published as sensor_msgs/Image rgb8, only for the cameras used in the frame and only
while someone subscribes (like RViz markers). No torch here.
"""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from aqr_perception.data.pictures import draw_boxes
from aqr_perception.detections import FrameDetections
from aqr_perception.frames.preprocess import ModelArrays


def debug_views(arrays: ModelArrays, det: FrameDetections, class_names: list[str], cameras: list[str]
                ) -> dict[str, np.ndarray]:
    """camera -> (H, W, 3) uint8 RGB at the model input size with ``det`` drawn, for every
    camera whose view was valid in ``arrays`` (boxes in the LiDAR frame)."""
    names = [class_names[int(i)] for i in det.labels]
    groups = [(det.boxes, names, True)]
    return {cam: draw_boxes(np.ascontiguousarray(arrays.images[v].transpose(1, 2, 0)), arrays.lidar2img[v], groups,
                            cam)
            for v, cam in enumerate(cameras) if arrays.camera_valid[v]}


def rgb_to_imgmsg(header: Header, rgb: np.ndarray) -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8 (cv_bridge's cv2_to_imgmsg, encoding="rgb8")."""
    h, w = rgb.shape[:2]
    msg = Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w)
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg
