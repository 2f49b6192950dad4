"""Model-input preprocessing keeps images and lidar2img consistent to a fraction of a pixel."""
import cv2
import numpy as np
import pytest

from aqr_perception.data.rig import nuscenes_like_rig
from aqr_perception.frames.preprocess import prepare_camera, resize


@pytest.mark.parametrize("src, dst", [((900, 1600), (192, 352)), ((900, 1600), (320, 800)), ((192, 352), (192, 352)),
                                      ((384, 704), (192, 352)), ((450, 800), (320, 800))])
def test_projected_point_lands_on_its_pixel_after_resize_and_crop(src, dst):
    cam = nuscenes_like_rig(src[1], src[0])[0]
    p = np.array([20.0, 1.3, 0.4, 1.0])                          # LiDAR frame, in front of CAM_FRONT
    uvw = cam.lidar2img @ p
    u, v = uvw[:2] / uvw[2]
    img = np.zeros((*src, 3), np.uint8)
    radius = max(4.0, 8.0 * src[1] / dst[1])
    cv2.circle(img, (int(round(u * 16)), int(round(v * 16))), int(radius * 16), (255, 255, 255), -1, cv2.LINE_AA,
               shift=4)
    out, l2i = prepare_camera(img, cam.K, cam.lidar_to_camera, dst)
    assert out.shape == (3, *dst)
    q = l2i.astype(np.float64) @ p
    eu, ev = q[:2] / q[2]
    w = out[0].astype(float)
    ys, xs = np.mgrid[0:dst[0], 0:dst[1]]
    cu, cv_ = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    assert abs(cu - eu) < 0.3 and abs(cv_ - ev) < 0.3


@pytest.mark.parametrize("src, dst", [((900, 1600), (198, 352)), ((720, 1280), (198, 352)), ((901, 1600), (198, 352)),
                                      ((1080, 1920), (320, 800)), ((450, 800), (320, 569))])
def test_resize_is_as_close_to_one_area_reduction_as_its_steps_allow(src, dst):
    """The stepwise reduction (2x halvings, then a small last step) against OpenCV's one
    direct INTER_AREA reduction on a blurred image with edges and text: within about one
    grey level on average (a 2-pixel shift is 3)."""
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 255, (*src, 3), dtype=np.uint8), (0, 0), 3)
    cv2.rectangle(img, (src[1] // 5, src[0] // 5), (src[1] // 2, src[0] * 3 // 4), (255, 255, 255), 3)
    cv2.putText(img, "AQR 123", (src[1] // 16, src[0] * 7 // 8), cv2.FONT_HERSHEY_SIMPLEX, src[0] / 180,
                (0, 0, 255), max(1, src[0] // 110))
    want = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_AREA).astype(float)
    got = resize(img, dst).astype(float)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    # measured: mean 0-1.2, 99th percentile 0-17; the same image shifted by 2 pixels: mean >= 2.9
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 30, (diff.mean(), np.percentile(diff, 99))
