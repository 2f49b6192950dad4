"""Per-camera debug images: boxes are drawn where the object is in the model's input view."""
import cv2
import numpy as np

from aqr_perception.config import NUSCENES_CLASSES
from aqr_perception.data.rig import nuscenes_like_rig
from aqr_perception.detections import FrameDetections
from aqr_perception.frames.conversions import imgmsg_to_cv2
from aqr_perception.frames.preprocess import build_model_arrays
from aqr_perception.ros.debug_images import debug_views, rgb_to_imgmsg

DST = (192, 352)
CENTRE = np.array([20.0, 1.3, 0.4])                       # LiDAR frame, in front of CAM_FRONT


def _frame(camera_valid=None):
    cams = nuscenes_like_rig(1600, 900)
    images = []
    for c in cams:
        img = np.zeros((900, 1600, 3), np.uint8)
        if c.name == "CAM_FRONT":                        # the object, painted in the full-size image
            uvw = c.lidar2img @ np.append(CENTRE, 1.0)
            cv2.circle(img, (int(uvw[0] / uvw[2]), int(uvw[1] / uvw[2])), 30, (0, 255, 0), -1)
        images.append(img)
    arrays = build_model_arrays(np.zeros((0, 4), np.float32), images, [c.K for c in cams],
                                [c.lidar_to_camera for c in cams], DST)
    if camera_valid is not None:
        arrays.camera_valid[:] = camera_valid
    return cams, arrays


def _detections(boxes):
    n = len(boxes)
    return FrameDetections(np.asarray(boxes, float).reshape(n, 9), np.full(n, 0.9), np.zeros(n, int), np.arange(n),
                           np.full((n, 1), 0.5), np.full((n, 1), 0.5))


def test_box_is_drawn_around_the_object_in_the_model_view():
    cams, arrays = _frame()
    names = [c.name for c in cams]
    box = [*CENTRE, 4.5, 2.0, 1.6, 0.0, 0.0, 0.0]
    drawn = debug_views(arrays, _detections([box]), list(NUSCENES_CLASSES), names)
    empty = debug_views(arrays, _detections([]), list(NUSCENES_CLASSES), names)
    assert set(drawn) == set(names) and drawn["CAM_FRONT"].shape == (*DST, 3)
    # where the painted object ended up after resize + crop (image path)
    green = (arrays.images[names.index("CAM_FRONT")][1] > 128) & (arrays.images[names.index("CAM_FRONT")][0] < 64)
    oy, ox = np.nonzero(green)
    # where the box lines were drawn (projection path)
    ly, lx = np.nonzero((drawn["CAM_FRONT"] != empty["CAM_FRONT"]).any(-1))
    assert len(lx) > 50
    assert lx.min() < ox.mean() < lx.max() and ly.min() < oy.mean() < ly.max()
    assert abs((lx.min() + lx.max()) / 2 - ox.mean()) < 0.15 * (lx.max() - lx.min())
    # the back camera does not see it
    assert np.array_equal(drawn["CAM_BACK"], empty["CAM_BACK"])


def test_masked_camera_gets_no_debug_image():
    valid = np.ones(6, bool)
    valid[3] = False
    cams, arrays = _frame(valid)
    views = debug_views(arrays, _detections([]), list(NUSCENES_CLASSES), [c.name for c in cams])
    assert cams[3].name not in views and len(views) == 5


def test_image_message_round_trip():
    from std_msgs.msg import Header

    rgb = np.random.default_rng(0).integers(0, 255, (*DST, 3), dtype=np.uint8)
    msg = rgb_to_imgmsg(Header(frame_id="CAM_FRONT"), rgb)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (DST[0], DST[1], "rgb8", 3 * DST[1])
    assert np.array_equal(imgmsg_to_cv2(msg, "rgb8"), rgb)
