"""What a user sees when the node or the player starts with a bad checkpoint, or is
stopped with Ctrl-C: one clear line and exit code 2 for start-up errors; a clean stop
(exit 0, no error, no skipped frame) on SIGINT to the process group, even mid-inference."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, PACKAGE_RESOURCES

BAG = PACKAGE_RESOURCES / "default_drive"
NODE = [sys.executable, "-m", "aqr_perception.ros.node"]
#: what an unclean shutdown prints (rclpy publishing on a dead context, a frame cut off)
SHUTDOWN_ERRORS = ("Traceback", "RCLError", "context is invalid", "Failed to publish", "frame skipped")


def _bad_checkpoints(tmp: Path) -> dict[str, Path]:
    data = BUNDLED_CHECKPOINT.read_bytes()
    files = {"missing": tmp / "does_not_exist.pt", "random_bytes": tmp / "random.pt", "truncated": tmp / "truncated.pt",
             "foreign": tmp / "mmdet3d_style.pth", "other_model": tmp / "other_model.pt", "nan_weights": tmp / "nan.pt"}
    files["random_bytes"].write_bytes(os.urandom(4096))
    files["truncated"].write_bytes(data[: len(data) // 2])
    # what a checkpoint of another project holds: weights and meta, no model config
    torch.save({"state_dict": {"pts_backbone.blocks.0.0.weight": torch.zeros(3)}, "meta": {"epoch": 20}},
               files["foreign"])
    blob = torch.load(BUNDLED_CHECKPOINT, map_location="cpu", weights_only=False)
    blob["model_config"]["transformer"]["ffn_dims"] //= 2      # the weights no longer fit the config
    torch.save(blob, files["other_model"])
    blob = torch.load(BUNDLED_CHECKPOINT, map_location="cpu", weights_only=False)
    key = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][key] = torch.full_like(blob["state_dict"][key], float("nan"))     # a diverged run
    torch.save(blob, files["nan_weights"])
    return files


@pytest.mark.parametrize("case", ["missing", "random_bytes", "truncated", "foreign", "other_model", "nan_weights"])
def test_bad_checkpoint_is_one_line_and_exit_code_2(case, tmp_path):
    path = _bad_checkpoints(tmp_path)[case]
    out = subprocess.run([*NODE, "--ros-args", "-p", f"checkpoint:={path}"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("aqr_perception_node: checkpoint ") and str(path) in lines[0]
    expected = {"missing": "no such file", "random_bytes": "not a readable PyTorch checkpoint",
                "truncated": "not a readable PyTorch checkpoint", "foreign": "not an aqr_perception checkpoint",
                "other_model": "different model than its config", "nan_weights": "NaN or infinite"}[case]
    assert expected in lines[0]


@pytest.mark.parametrize("params, words", [
    (["device:=cuda:0"], "device 'cuda:0' requested but CUDA is not available"),
    (["sync.camera_time_offsets_s:=[0.0, 0.1]"], "sync.camera_time_offsets_s has 2 entries for 6 cameras"),
    (["image_topic_format:=/{cam}/image"], "image_topic_format '/{cam}/image': only the field {camera}"),
    (["image_topic_format:=/image"], "gives the same topic to several cameras"),
    (["max_detections:=abc"], "parameter max_detections: Trying to set parameter 'max_detections' to 'abc'"),
    (["sync.image_buffer_size:=100"], "parameter sync.image_buffer_size: Invalid parameter value (100)"),
    (["max_processing_time_ms:=0"], "write a double with a decimal point"),
    (["score_threshold:=1.5"], "score_threshold"),
])
def test_bad_parameters_are_one_line_and_exit_code_2(params, words):
    cmd = [*NODE, "--ros-args", "-p", "checkpoint:=none"]
    for p in params:
        cmd += ["-p", p]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("aqr_perception_node: ") and words in lines[0], lines[0]


@pytest.mark.parametrize("case, words", [
    ("mixed_list", "sync.camera_time_offsets_s: the list mixes float and int"),
    ("missing_file", "No such file or directory"),
    ("not_yaml", "not valid YAML"),
    ("unknown_ros_argument", "unknown ROS arguments ['--no-such-flag']"),
    ("bad_override", "Couldn't parse parameter override rule"),     # rcl's refusal; its own log line held back
])
def test_a_parameter_file_or_argument_rcl_refuses_is_one_line_and_exit_code_2(case, words, tmp_path):
    """rcl refuses these in rclpy.init with a traceback (after a log line of its own); the node
    says what is wrong in one line."""
    params = tmp_path / "vehicle.param.yaml"
    if case == "mixed_list":
        params.write_text("/**:\n  ros__parameters:\n    sync:\n      camera_time_offsets_s: [0, 0.1, 0.0]\n")
    elif case == "not_yaml":
        params.write_text("/**: [\n")
    ros_args = {"unknown_ros_argument": ["--no-such-flag"], "bad_override": ["-p", "score_threshold:=[1"]}.get(
        case, ["--params-file", str(params)])
    out = subprocess.run([*NODE, "--ros-args", *ros_args], capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("aqr_perception_node: ") and words in lines[0], lines[0]


def test_unknown_parameters_are_named_in_a_warning(tmp_path):
    """A typo'd key in the parameter file and an unknown -p start the node, with a warning
    naming both (rclpy alone ignores them silently)."""
    from aqr_perception.ros.node_process import NodeProcess

    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    score_treshold: 0.5\n")
    with NodeProcess(["--params-file", str(params), "-p", "no_such_param:=3", "-p", "checkpoint:=none"],
                     log=tmp_path / "node.log") as node:
        node.wait_ready(90)
        assert node.stop() == 0
    assert "ignoring unknown parameter(s) no_such_param, score_treshold" in node.output(), node.output()


@pytest.mark.slow
def test_ctrl_c_during_inference_stops_the_node_cleanly(ros_context, tmp_path):
    """The node started as the README's command line starts it (``aqr-perception node
    --ros-args --params-file config/aqr_perception.param.yaml``, a few settings after it)
    answers a looping bag and stops cleanly on Ctrl-C in the middle of a frame."""
    from cli_helpers import CLI
    from vision_msgs.msg import Detection3DArray

    from aqr_perception.ros.node_process import NodeProcess, Probe, RosProcess, node_topic, player_command

    shipped = Path(__file__).resolve().parent.parent / "config" / "aqr_perception.param.yaml"
    with Probe("shutdown_probe", ros_context) as probe:
        got = probe.collect(Detection3DArray, node_topic("detections"))
        with NodeProcess(["--params-file", str(shipped), "-p", "score_threshold:=0.0",
                          "-p", "qos_reliability:=reliable", "-p", "sync.calibration_wait_s:=0.5"],
                         log=tmp_path / "node.log", executable=[str(CLI), "node"]) as node:
            # at rate 1 a sweep comes every 50 ms and a frame takes longer: the worker is always busy
            with RosProcess(player_command(BAG, "--rate", "1", "--loop", "20", "--linger", "0", "--wait-for",
                                           "/LIDAR_TOP", "/CAM_FRONT/image_rect_compressed", "/tf"),
                            log=tmp_path / "play.log") as player:
                answered = probe.spin_until(lambda: len(got) >= 2 or not node.running(), 120)
                assert answered and len(got) >= 2, f"{node.output()[-3000:]}\nplayer:\n{player.output()[-2000:]}"
                node.interrupt()
                assert node.wait(timeout_s=40) == 0, node.output()[-3000:]
    log = node.output()
    for text in SHUTDOWN_ERRORS:
        assert text not in log, log[-3000:]


def test_ctrl_c_stops_the_player_cleanly(ros_context, tmp_path):
    from sensor_msgs.msg import PointCloud2

    from aqr_perception.ros.node_process import Probe, RosProcess, player_command

    with Probe("shutdown_probe", ros_context) as probe:
        clouds = probe.collect(PointCloud2, "/LIDAR_TOP")
        with RosProcess(player_command(BAG, "--rate", "0.02", "--wait-for", "/LIDAR_TOP"),
                        log=tmp_path / "play.log") as player:
            assert probe.spin_until(lambda: bool(clouds), 60), player.output()
            rc = player.stop(timeout_s=20)
    text = player.output()
    assert rc == 0 and "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "play: interrupted after" in text


def test_config_file_builds_its_model_without_a_checkpoint_and_is_named_against_one(ros_context, tmp_path,
                                                                                      capfd):
    """``config_file`` with ``checkpoint:=none``: the node runs that config's model, untrained
    (said at configure); with a checkpoint of another model, the checkpoint's model runs and
    a warning names both. (The node in this process: the same configure as its own.)"""
    import yaml

    from aqr_perception.config import config_to_dict, load_config
    from aqr_perception.ros.node import AqrPerceptionNode, start_node

    data = config_to_dict(load_config("tiny"))
    data["model"]["name"], data["model"]["transformer"]["num_layers"] = "cmt_aqr_two_layers", 2
    path = tmp_path / "two_layers.yaml"
    path.write_text(yaml.safe_dump(data))
    for checkpoint, model in ((["-p", "checkpoint:=none"], "cmt_aqr_two_layers"), ([], "cmt_aqr_tiny")):
        node = AqrPerceptionNode(context=ros_context, cli_args=["--ros-args", "-p", f"config_file:={path}",
                                                                *checkpoint])
        try:
            start_node(node)
            assert node.runtime.cfg.name == model and node.runtime.trained == (not checkpoint)
        finally:
            node.destroy_node()
    err = capfd.readouterr().err
    assert "configured: model cmt_aqr_two_layers" in err and "checkpoint=NONE" in err
    assert f"config_file {path} describes model 'cmt_aqr_two_layers', the checkpoint holds 'cmt_aqr_tiny'" in err


def test_a_process_temporary_log_is_read_after_exit_and_removed_with_it():
    """RosProcess without a log file writes a temporary one: readable once the program has
    exited, gone when the RosProcess is (before: one aqr_proc_*.log left in /tmp per process)."""
    import gc

    from aqr_perception.ros.node_process import RosProcess

    with RosProcess([sys.executable, "-c", "print('said and done')"]) as proc:
        assert proc.wait(30) == 0
    log = proc.log
    assert log.is_file() and proc.output() == "said and done\n"
    del proc
    gc.collect()
    assert not log.exists()
