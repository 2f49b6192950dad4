"""Live input: a cloud that overtakes its own images, or the calibration, in transport
is held (bounded by sync.calibration_wait_s at startup, sync.camera_wait_s after)
instead of running with cameras masked; cameras that are down cost no wait; offline
readers never wait."""
import threading
import time

import numpy as np
from test_bad_input import NS, StubRuntime, _cloud, _image, _info, _pipeline, _tf_static

from aqr_perception.config import LidarBranchConfig, NodeConfig, SyncConfig
from aqr_perception.data.rig import nuscenes_like_rig
from aqr_perception.frames.pipeline import FramePipeline

T0, T1, T2 = NS, NS + 50_000_000, NS + 100_000_000     # instants 50 ms apart


def _later(delay_s, fn):
    threading.Timer(delay_s, fn).start()


def _timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


def _bare_pipeline(**sync):
    """No calibration, no images yet."""
    rig = nuscenes_like_rig(64, 32)
    cfg = NodeConfig(camera_names=[c.name for c in rig], image_transport="raw", sync=SyncConfig(**sync))
    return FramePipeline(cfg, StubRuntime()), rig


def test_a_cloud_waits_for_its_images_and_uses_them():
    cloud = _cloud(t_ns=T1)                                      # built first: only the wait is timed
    p, cams = _pipeline(camera_wait_s=5.0)
    for c in cams:
        p.on_image(c.name, _image(c.name, T0, np.full((32, 64, 3), 10, np.uint8)))
    late = np.full((32, 64, 3), 240, np.uint8)
    _later(0.2, lambda: [p.on_image(c.name, _image(c.name, T1, late)) for c in cams])
    out, waited = _timed(lambda: p.process(cloud, live=True))
    assert out.status == "ok" and out.inputs.masked == {}
    assert 0.15 < waited < 2.5                                   # woke on arrival, not at the bound
    assert np.all(p.runtime.calls[-1].images == 240)             # the model saw the T1 images
    assert p.input_waits.clouds_waited == 1 and p.input_waits.wait_timeouts == 0
    # the wait is reported apart from the processing stages
    assert 150 < out.stage_ms["input_wait_ms"] <= 1e3 * waited
    assert out.stage_ms["preprocess_ms"] + out.stage_ms["inference_ms"] < 1e3 * waited - 100


def test_at_startup_the_first_cloud_waits_for_every_camera_and_its_calibration():
    cloud = _cloud(t_ns=T1)
    p, rig = _bare_pipeline(calibration_wait_s=5.0, camera_wait_s=0.0)

    def arrive():
        p.on_tf_static(_tf_static(rig))
        for c in rig:
            p.on_camera_info(c.name, _info(c.name, c.K))
            p.on_image(c.name, _image(c.name, T1))

    _later(0.2, arrive)
    out, waited = _timed(lambda: p.process(cloud, live=True))    # the cloud came first
    assert out.status == "ok" and out.inputs.masked == {} and 0.15 < waited < 2.5


def test_at_startup_an_image_of_this_instant_costs_only_the_camera_wait():
    """Calibrated, every camera's first image in: a cloud whose images of its instant are
    not there (a stepwise replay holds the next frame's back) waits camera_wait_s, not the
    startup bound, and uses the images it has."""
    cloud = _cloud(t_ns=T1)
    p, cams = _pipeline(calibration_wait_s=30.0, camera_wait_s=0.3)
    for c in cams:
        p.on_image(c.name, _image(c.name, T0))
    out, waited = _timed(lambda: p.process(cloud, live=True))
    assert out.status == "ok" and out.inputs.masked == {}
    assert 0.25 < waited < 5.0                                   # the camera wait, far below the 30 s bound
    assert p.input_waits.wait_timeouts == 1


def test_a_down_camera_costs_no_wait_after_startup():
    cloud = _cloud(t_ns=T1)
    p, cams = _pipeline(camera_wait_s=5.0)
    for c in cams[1:]:                                          # the first camera never sends
        p.on_image(c.name, _image(c.name, T1))
    out, waited = _timed(lambda: p.process(cloud, live=True))
    assert out.status == "ok" and waited < 1.0
    assert list(out.inputs.masked) == [cams[0].name] and "no image" in out.inputs.masked[cams[0].name]
    assert p.input_waits.clouds_waited == 0


def test_lost_inputs_cost_the_bound_and_a_missing_calibration_is_waited_for_once():
    cloud, cloud2 = _cloud(t_ns=T1), _cloud(t_ns=T2)
    p, rig = _bare_pipeline(calibration_wait_s=0.0, camera_wait_s=0.3)
    p.on_tf_static(_tf_static(rig))
    for c in rig[1:]:                                           # the first camera has no CameraInfo, ever
        p.on_camera_info(c.name, _info(c.name, c.K))
    for c in rig:
        p.on_image(c.name, _image(c.name, T0))
    for c in rig[:-1]:                                          # the last camera's T1 image is lost
        p.on_image(c.name, _image(c.name, T1))
    out, waited = _timed(lambda: p.process(cloud, live=True))
    assert out.status == "ok" and 0.25 < waited < 2.5
    assert "CameraInfo" in out.inputs.masked[rig[0].name] and rig[-1].name not in out.inputs.masked
    assert p.input_waits.wait_timeouts == 1
    for c in rig:                                               # next instant: every image on time ...
        p.on_image(c.name, _image(c.name, T2))
    out, waited = _timed(lambda: p.process(cloud2, live=True))
    assert out.status == "ok" and waited < 0.2                  # ... and the calibration is not waited for again
    assert list(out.inputs.masked) == [rig[0].name]


def test_a_startup_camera_that_never_comes_costs_the_startup_bound_once():
    cloud, cloud2 = _cloud(t_ns=T1), _cloud(t_ns=T2)
    p, rig = _bare_pipeline(calibration_wait_s=0.3, camera_wait_s=5.0)
    p.on_tf_static(_tf_static(rig))
    for c in rig[1:]:                                           # the first camera is absent entirely
        p.on_camera_info(c.name, _info(c.name, c.K))
        p.on_image(c.name, _image(c.name, T1))
    out, waited = _timed(lambda: p.process(cloud, live=True))
    assert out.status == "ok" and 0.25 < waited < 2.5 and list(out.inputs.masked) == [rig[0].name]
    for c in rig[1:]:
        p.on_image(c.name, _image(c.name, T2))
    out, waited = _timed(lambda: p.process(cloud2, live=True))
    assert out.status == "ok" and waited < 1.0 and list(out.inputs.masked) == [rig[0].name]


def test_offline_processing_never_waits():
    cloud = _cloud(t_ns=T1)
    p, cams = _pipeline(camera_wait_s=5.0, calibration_wait_s=5.0)
    for c in cams:
        p.on_image(c.name, _image(c.name, T0))
    out, waited = _timed(lambda: p.process(cloud))
    assert out.status == "ok" and out.inputs.masked == {} and waited < 1.0 and p.input_waits.clouds_waited == 0
    assert out.stage_ms["input_wait_ms"] < 1.0


def _ego_tf(t_ns, x):
    """/tf: the LiDAR ("lidar") at x metres along the map's x axis."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    t = TransformStamped(child_frame_id="lidar")
    t.header.frame_id = "map"
    t.header.stamp.sec, t.header.stamp.nanosec = divmod(t_ns, NS)
    t.transform.translation.x = float(x)
    t.transform.rotation.w = 1.0
    return TFMessage(transforms=[t])


def test_a_multi_sweep_cloud_waits_for_its_ego_pose_and_a_dead_tf_stream_costs_only_the_bound():
    clouds = [_cloud(t_ns=t) for t in (T0, T1, T2)]
    p, cams = _pipeline(camera_wait_s=5.0, lidar=LidarBranchConfig(sweeps=3, point_features=5))
    for c in cams:
        p.on_image(c.name, _image(c.name, T1))
    p.on_tf(_ego_tf(T0, 0.0))
    assert p.process(clouds[0], live=True).status == "ok"
    _later(0.2, lambda: p.on_tf(_ego_tf(T1, 0.5)))               # the pose of T1 is still in transport
    out, waited = _timed(lambda: p.process(clouds[1], live=True))
    assert 0.15 < waited < 2.5
    pts = p.runtime.calls[-1].points
    assert sorted(np.unique(pts[:, 4]).round(3)) == [0.0, 0.05]
    # the T0 sweep, 0.5 m behind, is moved back by 0.5 m into the T1 frame
    np.testing.assert_allclose(pts[pts[:, 4] > 0, 0], pts[pts[:, 4] == 0, 0] - 0.5, atol=1e-5)
    # the /tf stream stops: the next cloud waits the bound (camera_wait_s) and goes alone
    p.cfg = p.cfg.model_copy(update={"sync": SyncConfig(calibration_wait_s=0.0, camera_wait_s=0.3)})
    out, waited = _timed(lambda: p.process(clouds[2], live=True))
    assert out.status == "ok" and 0.25 < waited < 2.5
    assert np.all(p.runtime.calls[-1].points[:, 4] == 0) and p.sweeps.counters.frames_without_pose == 1
