"""``extrinsics_source: file``: the LiDAR->camera extrinsics from ``calibration_file``
instead of /tf_static. The frames are those the same rig gives through /tf_static (an
independent route: quaternions composed by tf lookups); a camera the file leaves out is
masked alone, with the reason; a file the node cannot use stops configure with one line."""
import subprocess
import sys

import numpy as np
import pytest
import yaml
from test_bad_input import NS, H, StubRuntime, W, _cloud, _image, _info, _tf_static

from aqr_perception.config import ConfigError, NodeConfig, SyncConfig
from aqr_perception.data.rig import nuscenes_like_rig
from aqr_perception.frames.pipeline import FramePipeline


def _write_calibration(path, cams) -> str:
    path.write_text(yaml.safe_dump({c.name: {"lidar_to_camera": [float(v) for v in c.lidar_to_camera.reshape(-1)]}
                                    for c in cams}))
    return str(path)


def _frame(cams, **node):
    cfg = NodeConfig(camera_names=[c.name for c in nuscenes_like_rig(W, H)], image_transport="raw",
                     sync=SyncConfig(calibration_wait_s=0.0), **node)
    p = FramePipeline(cfg, StubRuntime())
    for c in nuscenes_like_rig(W, H):
        p.on_camera_info(c.name, _info(c.name, c.K))
        p.on_image(c.name, _image(c.name, NS))
    if node.get("extrinsics_source", "tf_static") == "tf_static":
        p.on_tf_static(_tf_static(cams))
    return p.process(_cloud(t_ns=NS))


def test_extrinsics_from_a_calibration_file_give_the_frames_tf_static_gives(tmp_path):
    cams = nuscenes_like_rig(W, H)
    by_tf = _frame(cams)
    path = _write_calibration(tmp_path / "calib.yaml", cams[:5])            # CAM_BACK_RIGHT left out
    by_file = _frame(cams, extrinsics_source="file", calibration_file=path)
    assert by_tf.status == by_file.status == "ok" and by_tf.inputs.masked == {}
    assert by_file.inputs.masked == {cams[5].name: f"no extrinsic for {cams[5].name} in file"}
    a, b = by_tf.inputs.arrays, by_file.inputs.arrays
    np.testing.assert_allclose(b.lidar2img[:5], a.lidar2img[:5], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(b.images[:5], a.images[:5])
    assert list(b.camera_valid) == [True] * 5 + [False]


@pytest.mark.parametrize("content, words", [
    (None, "No such file or directory"),
    ("a: [1, 2\n", "not valid YAML (line 2, column 1)"),
    ("- 1\n- 2\n", "expected a mapping camera -> {lidar_to_camera: [16 numbers]}, got list"),
    ({"CAM_FRONT": {"lidar_to_camera": [1.0] * 15}}, "CAM_FRONT.lidar_to_camera must be 16 finite numbers"),
    ({"CAM_FRONT": [1.0] * 16}, "CAM_FRONT.lidar_to_camera must be 16 finite numbers"),
    ({"CAM_FRONT": None}, "CAM_FRONT.lidar_to_camera must be 16 finite numbers"),
    ({"CAM_FRONT": {"lidar_to_camera": [10 ** 400] * 16}}, "CAM_FRONT.lidar_to_camera must be 16 finite numbers"),
    ({"CAM_FRONT": {"lidar_to_camera": [2.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]}}, "not a rigid motion"),
    ({"cam_front": {"lidar_to_camera": np.eye(4).reshape(-1).tolist()}}, "names none of the node's cameras"),
])
def test_a_calibration_file_the_node_cannot_use_is_one_line(tmp_path, content, words):
    path = tmp_path / "calib.yaml"
    if isinstance(content, dict):
        path.write_text(yaml.safe_dump(content))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as exc:
        _frame([], extrinsics_source="file", calibration_file=str(path))
    assert words in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_extrinsics_source_file_without_a_file_is_refused_by_the_config():
    with pytest.raises(ValueError, match="extrinsics_source is 'file' but calibration_file is empty"):
        NodeConfig(extrinsics_source="file")


def test_the_node_started_with_a_broken_calibration_file_says_so_in_one_line(tmp_path):
    path = tmp_path / "calib.yaml"
    path.write_text("CAM_FRONT: {lidar_to_camera: [1, 2\n")
    out = subprocess.run([sys.executable, "-m", "aqr_perception.ros.node", "--ros-args", "-p", "checkpoint:=none",
                          "-p", "extrinsics_source:=file", "-p", f"calibration_file:={path}"],
                         capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("aqr_perception_node: ") and f"calibration_file {path}: not valid YAML" in lines[0]
