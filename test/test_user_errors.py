"""A user's mistake on the command line: one line on stderr naming it, exit code 2, no
traceback, before any work; and the parameter-file checks agree with rcl's own parser."""
import re
import shutil
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_cli

from aqr_perception.config import ConfigError, node_config_from_param_file, node_param_schema, read_param_file
from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, PACKAGE_RESOURCES

DRIVE = PACKAGE_RESOURCES / "default_drive"


def _one_line_exit_2(out, *words):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


#: parameter files, and whether rcl reads them (its verdict is what the test compares with)
PARAM_FILES = {
    "mixed_int_float": "/**:\n  ros__parameters:\n    a: [0, 0.1]\n",
    "mixed_bool_int": "/**:\n  ros__parameters:\n    a: [true, 1]\n",
    "mixed_str_int": "/**:\n  ros__parameters:\n    a: [ab, 1]\n",
    "list_of_lists": "/**:\n  ros__parameters:\n    a: [[1, 2], [3]]\n",
    "doubles": "/**:\n  ros__parameters:\n    a: [0.0, 0.1]\n",
    "strings": "/**:\n  ros__parameters:\n    a: [ab, cd]\n",
    "bools": "/**:\n  ros__parameters:\n    a: [true, false]\n",
    "empty_list": "/**:\n  ros__parameters:\n    a: []\n",
    "namespaced": "ns:\n  aqr_perception:\n    ros__parameters:\n      sync:\n        b: [1, 2]\n",
    "namespaced_mixed": "ns:\n  aqr_perception:\n    ros__parameters:\n      sync:\n        b: [1, 2.0]\n",
    "a_list": "- a\n- b\n",
    "no_node": "a: 3\n",
    "no_ros_parameters": "/**:\n  foo: 1\n",
    "empty_ros_parameters": "/**:\n  ros__parameters:\n",
    "not_yaml": "/**: [\n",
    "exponent_doubles": "/**:\n  ros__parameters:\n    a: [0.0, 1e-3, 2E5]\n",
    "exponent_and_int": "/**:\n  ros__parameters:\n    a: [1e-3, 2]\n",
    "empty_value": "/**:\n  ros__parameters:\n    checkpoint:\n",
    "several_sections": "/**:\n  ros__parameters:\n    use_sim_time: true\naqr_perception:\n  ros__parameters:\n"
                        "    lidar_topic: /my_lidar\n",
}


def test_the_parameter_file_check_refuses_what_rcl_refuses(tmp_path):
    """``read_param_file`` (used by the node before rclpy.init, by ``config validate`` and by
    ``eval --node-params``) refuses a file exactly where rcl's parser does, on a real rcl."""
    import rclpy
    import rclpy.context

    verdicts = {}
    for name, text in PARAM_FILES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        try:
            read_param_file(path)
            ours = "reads"
        except ConfigError:
            ours = "refuses"
        ctx = rclpy.context.Context()
        try:
            rclpy.init(args=["x", "--ros-args", "--params-file", str(path)], context=ctx)
            rcl = "reads"
            rclpy.shutdown(context=ctx)
        except Exception:
            rcl = "refuses"
        verdicts[name] = (ours, rcl)
    assert all(ours == rcl for ours, rcl in verdicts.values()), verdicts
    assert sum(rcl == "refuses" for _, rcl in verdicts.values()) >= 8       # both kinds well represented


def test_the_node_settings_of_a_parameter_file_are_what_rclpy_gives_the_node(ros_context, tmp_path):
    """Every section naming the node applies, later ones winning (a vehicle's file sets
    use_sim_time for all nodes under /**, then this node's own): compared with the parameter
    overrides rclpy hands a node named aqr_perception for the same file."""
    from rclpy.node import Node

    path = tmp_path / "vehicle.param.yaml"
    path.write_text("/**:\n  ros__parameters:\n    use_sim_time: true\n    score_threshold: 0.2\n"
                    "aqr_perception:\n  ros__parameters:\n    lidar_topic: /my_lidar\n    sync:\n"
                    "      camera_time_offsets_s: [0.0, 1e-3, 0.0, 0.0, 0.0, 0.0]\n"
                    "/**/aqr_perception:\n  ros__parameters:\n    score_threshold: 0.4\n")
    node = Node("aqr_perception", context=ros_context, cli_args=["--ros-args", "--params-file", str(path)],
                automatically_declare_parameters_from_overrides=True)
    try:
        given = {name: p.value for name, p in node._parameters.items()}
    finally:
        node.destroy_node()
    cfg = node_config_from_param_file(path)
    assert given["use_sim_time"] is True
    assert (cfg.lidar_topic, cfg.score_threshold) == (given["lidar_topic"], given["score_threshold"])
    assert (cfg.lidar_topic, cfg.score_threshold) == ("/my_lidar", 0.4)
    assert cfg.sync.camera_time_offsets_s == list(given["sync.camera_time_offsets_s"]) == [0.0, 0.001, 0, 0, 0, 0]


def test_process_parameters_are_accepted_in_a_parameter_file(tmp_path):
    """``autostart`` and ``use_sim_time`` (the node's and rclpy's, not NodeConfig's) pass the
    file reader and the JSON schema; a non-boolean one is named."""
    import jsonschema

    path = _params(tmp_path / "p.yaml", {"autostart": False, "use_sim_time": True, "score_threshold": 0.4})
    assert node_config_from_param_file(path).score_threshold == 0.4
    jsonschema.validate(yaml.safe_load(path.read_text()), node_param_schema())
    with pytest.raises(ConfigError, match="autostart must be true or false"):
        node_config_from_param_file(_params(tmp_path / "q.yaml", {"autostart": "yes please"}))


def test_config_validate_is_one_line_per_bad_file_and_exit_2(tmp_path):
    mixed = tmp_path / "mixed.param.yaml"
    mixed.write_text(PARAM_FILES["mixed_int_float"].replace(" a:", " sync:\n      camera_time_offsets_s:"))
    unknown = _params(tmp_path / "unknown.param.yaml", {"score_treshold": 0.5})
    out = run_cli("config", "validate", "config/aqr_perception.param.yaml", str(mixed), str(unknown))
    assert out.returncode == 2 and "ok: config/aqr_perception.param.yaml" in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in out.stderr, out.stderr
    assert str(mixed) in lines[0] and "camera_time_offsets_s" in lines[0] and "mixes float and int" in lines[0]
    assert str(unknown) in lines[1] and "score_treshold: unknown key" in lines[1]


def test_a_bad_override_names_the_command_line_not_the_file():
    line = _one_line_exit_2(run_cli("config", "show", "--set", "model.bogus=1"), "model.bogus: unknown key")
    assert "with the overrides model.bogus=1" in line


def test_train_with_a_bad_config_is_one_line_and_exit_2(tmp_path):
    _one_line_exit_2(run_cli("train", "--data", str(tmp_path), "--set", "train.bogus=1"), "aqr-perception train: ",
                     "train.bogus: unknown key")
    _one_line_exit_2(run_cli("train", "--data", str(tmp_path), "--config", str(tmp_path / "none.yaml")),
                     "config file not found")


def test_robustness_refuses_an_unknown_condition_before_any_work(tmp_path):
    out = run_cli("robustness", "--conditions", "clean", "nolidar", "--out", str(tmp_path / "r"))
    _one_line_exit_2(out, "unknown nolidar", "no_lidar")
    assert not (tmp_path / "r").exists()


def test_play_of_a_missing_bag_is_one_line_and_exit_2(tmp_path):
    _one_line_exit_2(run_cli("play", str(tmp_path / "nothing")), "not a readable ROS 2 bag")


def test_eval_of_missing_files_is_one_line_and_exit_2(tmp_path):
    _one_line_exit_2(run_cli("eval", "--bag", str(tmp_path / "nothing")), "nothing: no such file or folder")
    _one_line_exit_2(run_cli("eval", "--bag", str(DRIVE), "--gt", str(tmp_path / "gt.json")),
                     "gt.json: no such file or folder")
    _one_line_exit_2(run_cli("eval", "--bag", str(DRIVE), "--node-params", str(tmp_path / "v.yaml")),
                     "parameter file", "v.yaml")


def test_ground_truth_that_cannot_be_used_is_one_line_before_any_work(tmp_path):
    """A ground truth naming a class the model lacks (a raw nuScenes category, say), one
    that is not JSON, one without the layout: one line naming the file, the frame and the
    problem, before the bag is played (before: a KeyError traceback, or a bare JSON message,
    after the whole evaluation had run)."""
    import json

    from aqr_perception.config import load_config
    from aqr_perception.data.ground_truth import read_ground_truth

    gt = json.loads(DRIVE.with_name(DRIVE.name + ".gt.json").read_text())
    gt["frames"][2]["boxes"][0]["detection_name"] = "vehicle.car"
    path = tmp_path / "raw_names.gt.json"
    path.write_text(json.dumps(gt))
    _one_line_exit_2(run_cli("eval", "--bag", str(DRIVE), "--gt", str(path), "--out", str(tmp_path / "out")),
                     f"ground truth {path}: frames[2]: detection_name vehicle.car is not among the model's classes")
    assert not (tmp_path / "out").exists()
    classes = list(load_config("tiny").model.classes)
    for text, words in (("{not json", "not JSON (Expecting property name enclosed in double quotes at line 1"),
                        ('{"frames": []}', "the field 'meta' is missing")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(words)):
            read_ground_truth(path, classes)


def test_eval_replay_with_a_checkpoint_the_node_cannot_load_is_one_line(tmp_path):
    """Replay (the default mode) checks the checkpoint before starting the node, as offline
    does (before: the node said it and exited, and eval died in a RuntimeError traceback);
    a node that still exits at start-up (exit code 2, its own line said) ends the replay in
    a ConfigError, one line, not a traceback."""
    from types import SimpleNamespace

    from aqr_perception.config import NodeConfig
    from aqr_perception.evaluation.replay import wait_for_node_inputs

    _one_line_exit_2(run_cli("eval", "--bag", str(DRIVE), "--checkpoint", str(tmp_path / "x.pt"),
                             "--out", str(tmp_path / "out")), f"checkpoint {tmp_path / 'x.pt'}: no such file")
    assert not (tmp_path / "out").exists()

    class ExitedAtStartUp:
        returncode = 2

        def running(self) -> bool:
            return False

    class Player:
        publishers = {"/LIDAR_TOP": None}

        def wait_for_subscribers(self, topics, timeout_s, spin) -> bool:
            return False

    with pytest.raises(ConfigError, match=re.escape("the node exited with code 2 before subscribing (its output "
                                                    "above says why)")):
        wait_for_node_inputs(Player(), SimpleNamespace(spin=lambda *_: None), NodeConfig(), ExitedAtStartUp())


def test_eval_record_refuses_what_it_cannot_record_before_any_work(tmp_path):
    """``eval --bag B --record DIR`` records a replay over DDS: offline there is nothing on
    DDS to record, and an existing recording is never overwritten."""
    _one_line_exit_2(run_cli("eval", "--bag", str(DRIVE), "--mode", "offline", "--record", str(tmp_path / "rec")),
                     "--record writes the replay of one bag (--mode replay, one --bag)")
    (tmp_path / "rec").mkdir()
    _one_line_exit_2(run_cli("eval", "--bag", str(DRIVE), "--record", str(tmp_path / "rec"), "--out",
                             str(tmp_path / "out")), "rec: it exists (a recording is never overwritten)")
    assert not (tmp_path / "out").exists() and not any((tmp_path / "rec").iterdir())


@pytest.mark.parametrize("mode", ["offline", "replay"])
def test_eval_of_a_bag_whose_camera_topics_the_node_does_not_read_fails_naming_them(mode, tmp_path):
    """Without the check the node runs on LiDAR alone and scores lower, exit code 0."""
    out = run_cli("eval", "--bag", str(DRIVE), "--mode", mode, "--set",
                  "node.image_topic_format=/{camera}/image/compressed", "--out", str(tmp_path / "out"), "--quiet")
    _one_line_exit_2(out, "/CAM_FRONT/image/compressed", "/CAM_FRONT/image_rect_compressed")


def test_offline_eval_of_a_bag_without_the_lidar_topic_fails_naming_it(tmp_path):
    out = run_cli("eval", "--bag", str(DRIVE), "--mode", "offline", "--set", "node.lidar_topic=/velodyne_points",
                  "--out", str(tmp_path / "out"), "--quiet")
    _one_line_exit_2(out, "/velodyne_points", "/LIDAR_TOP")


def test_eval_uses_the_checkpoint_of_the_node_parameter_file(tmp_path):
    """A vehicle's parameter file names its model: eval scores that one, and --checkpoint wins."""
    import json

    missing = _params(tmp_path / "missing.param.yaml", {"checkpoint": str(tmp_path / "vehicle.pt")})
    _one_line_exit_2(run_cli("eval", "--bag", str(DRIVE), "--mode", "offline", "--node-params", str(missing),
                             "--out", str(tmp_path / "o1"), "--quiet"), "vehicle.pt: no such file")
    shutil.copy(BUNDLED_CHECKPOINT, tmp_path / "vehicle.pt")
    out = run_cli("eval", "--bag", str(DRIVE), "--mode", "offline", "--node-params", str(missing),
                  "--set", "eval.pictures=0", "--out", str(tmp_path / "o2"), "--quiet", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "o2" / "report.json").read_text())["checkpoint"] == str(tmp_path / "vehicle.pt")
    _one_line_exit_2(run_cli("eval", "--bag", str(DRIVE), "--mode", "offline", "--node-params", str(missing),
                             "--checkpoint", str(tmp_path / "given.pt"), "--out", str(tmp_path / "o3"), "--quiet"),
                     "given.pt: no such file")


def test_play_names_an_excluded_topic_the_bag_lacks_and_plays_on():
    out = run_cli("play", str(DRIVE), "--rate", "0", "--linger", "0", "--exclude", "/CAM_FRONT/image_rect_compresed")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--exclude /CAM_FRONT/image_rect_compresed: the bag has no such topic" in out.stderr
    assert "/CAM_FRONT/image_rect_compressed" in out.stderr            # the bag's topics, to pick from


def test_a_bag_missing_one_of_the_node_cameras_beside_other_images_is_evaluated(tmp_path):
    """One camera dropped out while the bag holds another image topic (a raw copy, another
    camera): the node's other five cameras are there, so it is no topic mismatch."""
    from bag_helpers import rename_topic

    from aqr_perception.config import NodeConfig
    from aqr_perception.data.bag_reader import check_bag_topics

    bag = rename_topic(DRIVE, tmp_path / "drive", "/CAM_FRONT/image_rect_compressed",
                       "/CAM_FRONT/image_color/compressed")
    check_bag_topics(bag, NodeConfig())
    with pytest.raises(ConfigError, match="none of the node's camera image topics"):
        check_bag_topics(bag, NodeConfig(image_topic_format="/{camera}/image"))


def test_train_refuses_drives_it_cannot_train_on_in_one_line(tmp_path, capsys):
    """A bag without the LiDAR topic of the node's parameter file, and ground truth whose stamps match none of
    the sweeps: exit code 2 and one line naming the cause (before: both went on to a
    ValueError traceback from the DataLoader, the first after decoding every drive)."""
    import json

    import aqr_perception.training.train as train_mod

    shutil.copytree(PACKAGE_RESOURCES / "default_drive", tmp_path / "data" / "drive")
    gt = json.loads((PACKAGE_RESOURCES / "default_drive.gt.json").read_text())
    for frame in gt["frames"]:
        frame["stamp_ns"] += 7
    (tmp_path / "data" / "drive.gt.json").write_text(json.dumps(gt))

    def refused(*extra: str) -> str:
        rc = train_mod.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--quiet", *extra])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, lines
        return lines[0]

    vehicle = _params(tmp_path / "vehicle.param.yaml", {"lidar_topic": "/velodyne_points"})
    line = refused("--node-params", str(vehicle))         # the node's own parameter file, as eval takes it
    assert "no messages on the node's lidar_topic /velodyne_points" in line and "/LIDAR_TOP" in line
    line = refused()
    assert "0 annotated frames in 1 drive(s)" in line and f"{len(gt['frames'])} sweeps without ground truth" in line
    assert not (tmp_path / "out" / "final.pt").exists()


@pytest.mark.parametrize("command", [
    ["synth", "--drives", "1", "--frames", "2"],
    ["eval", "--bag", str(PACKAGE_RESOURCES / "default_drive"), "--mode", "offline"],
    ["train", "--data", str(PACKAGE_RESOURCES), "--quiet", "--max-steps", "1"],
    ["demo", "--mode", "offline"],
    ["robustness", "--drives", "1", "--conditions", "clean"],
    ["nuscenes2bag", "--dataroot", "{tmp}/nuscenes", "--quiet"],
], ids=lambda command: command[0])
def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_work(command, tmp_path, capsys):
    """``--out`` naming a file (or a path through one): exit code 2 and one line naming it,
    before the work (before: a FileExistsError / NotADirectoryError traceback, for eval,
    robustness and train after all of their work); the file is left as it was."""
    from aqr_perception.cli import main

    (tmp_path / "nuscenes" / "v1.0-mini").mkdir(parents=True)       # tables are looked for first
    taken = tmp_path / "results"
    taken.write_text("a file the user keeps")
    for out in (taken, taken / "sub"):
        rc = main([arg.format(tmp=tmp_path) for arg in command] + ["--out", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, lines
        assert f"--out {out}: " in lines[0] and ("a file is there, not a folder" in lines[0]
                                                 or "cannot make the folder (Not a directory)" in lines[0]), lines[0]
    assert taken.read_text() == "a file the user keeps"


def test_a_submission_or_import_beside_a_file_is_one_line(tmp_path, capsys):
    """``--submission`` / import-cmt ``--out`` inside a path that is a file: one line, exit 2."""
    from aqr_perception.cli import main

    taken = tmp_path / "results"
    taken.write_text("")
    for argv in (["eval", "--bag", str(PACKAGE_RESOURCES / "default_drive"), "--mode", "offline", "--out",
                  str(tmp_path / "eval"), "--submission", str(taken / "results_nusc.json")],
                 ["import-cmt", str(tmp_path / "cmt.pth"), "--config", "tiny", "--out", str(taken / "cmt.pt")]):
        rc = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and f"{taken}: a file is there, not a folder" in lines[0], lines


def _as_from_a_terminal() -> None:
    """SIGINT as a terminal's program has it: a suite started in the background (``cmd &``
    in a script, nohup) passes it on ignored, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C during ``synth`` (any command without a stop of its own): one line, exit code
    130, as a shell reports it (before: a KeyboardInterrupt traceback)."""
    import signal
    import subprocess
    import time

    from cli_helpers import CLI

    err = tmp_path / "stderr"
    with err.open("w") as f:
        proc = subprocess.Popen([str(CLI), "synth", "--drives", "50", "--frames", "4", "--out", str(tmp_path / "d")],
                                stdout=subprocess.DEVNULL, stderr=f, preexec_fn=_as_from_a_terminal)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob("d/*.gt.json")):
            time.sleep(0.1)                                     # one drive written: it is at work
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    text = err.read_text()
    assert "Traceback" not in text and text.strip().splitlines()[-1].endswith("aqr-perception synth: interrupted"), text


def test_ctrl_c_during_an_eval_replay_stops_its_node_too(tmp_path):
    """Ctrl-C while eval replays a bag to its node process: eval ends in one line, exit code
    130, and the node it started is gone (it runs in a session of its own, so the terminal's
    Ctrl-C reaches it only through eval)."""
    import signal
    import subprocess
    import time

    from cli_helpers import CLI

    err = tmp_path / "stderr"
    with err.open("w") as f:
        proc = subprocess.Popen([str(CLI), "eval", "--bag", str(DRIVE), "--rate", "0.02", "--out", str(tmp_path / "o")],
                                stdout=subprocess.DEVNULL, stderr=f, preexec_fn=_as_from_a_terminal)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and "ready:" not in err.read_text():
            time.sleep(0.1)
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert children, err.read_text()[-3000:]                          # the node
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    assert err.read_text().strip().splitlines()[-1] == "aqr-perception eval: interrupted"
    alive = subprocess.run(["ps", "-o", "pid=", "-p", ",".join(children)], capture_output=True, text=True).stdout
    assert alive.strip() == ""
