"""``launch/aqr_perception.launch.py`` evaluated as ``ros2 launch`` would evaluate it (the
launch stand-in of ``launch_standin.py``: ROS 2's launch is not on PyPI), over a colcon-like
install prefix found by the real ament_index_python; and the node started with the command
line it gives runs in the namespace with the checkpoint it was launched with."""
import shutil
import sys
from pathlib import Path

import yaml
from launch_standin import launch_commands

from aqr_perception.model.runtime import BUNDLED_CHECKPOINT
from aqr_perception.ros.node_process import READY_LINE, RosProcess

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "aqr_perception.launch.py"
EXECUTABLES = {("aqr_perception", "aqr_perception_node"): [sys.executable, "-m", "aqr_perception.ros.node"]}


def _install_prefix(tmp: Path) -> Path:
    """The share folder of the package as colcon installs it, with its ament index entry."""
    prefix = tmp / "install"
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "aqr_perception").write_text("")
    shutil.copytree(REPO / "config", prefix / "share" / "aqr_perception" / "config")
    return prefix


def _ros_args(cmd: list[str]) -> tuple[dict[str, str], list[dict]]:
    """(-r remappings, the parameter files' ros__parameters in order) of a node command."""
    args = cmd[cmd.index("--ros-args") + 1:]
    remaps = dict(args[i + 1].split(":=") for i, a in enumerate(args) if a == "-r")
    files = [yaml.safe_load(Path(args[i + 1]).read_text())["/**"]["ros__parameters"]
             for i, a in enumerate(args) if a == "--params-file"]
    return remaps, files


def test_the_launch_arguments_reach_the_node_command_line(tmp_path, monkeypatch):
    prefix = _install_prefix(tmp_path)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    (cmd,) = launch_commands(LAUNCH, {}, EXECUTABLES, tmp_path)
    remaps, files = _ros_args(cmd)
    assert remaps == {"__node": "aqr_perception", "__ns": "/"}
    shipped = yaml.safe_load((REPO / "config" / "aqr_perception.param.yaml").read_text())["/**"]["ros__parameters"]
    assert files == [shipped, {"use_sim_time": False, "autostart": True}]     # the parameter file's checkpoint
    assert str(prefix / "share" / "aqr_perception" / "config" / "aqr_perception.param.yaml") in cmd

    mine = tmp_path / "vehicle.param.yaml"
    mine.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"score_threshold": 0.4}}}))
    (cmd,) = launch_commands(LAUNCH, {"params_file": str(mine), "namespace": "perception", "use_sim_time": "true",
                                      "checkpoint": "/models/cmt.pt", "autostart": "false"}, EXECUTABLES, tmp_path)
    remaps, files = _ros_args(cmd)
    assert remaps == {"__node": "aqr_perception", "__ns": "/perception"}
    assert files == [{"score_threshold": 0.4}, {"use_sim_time": True, "autostart": False},
                     {"checkpoint": "/models/cmt.pt"}]                       # the override comes last


def test_the_launched_node_runs_in_its_namespace_with_the_checkpoint_given(tmp_path, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(_install_prefix(tmp_path)))
    checkpoint = tmp_path / "model.pt"
    shutil.copy(BUNDLED_CHECKPOINT, checkpoint)
    (cmd,) = launch_commands(LAUNCH, {"namespace": "perception", "checkpoint": str(checkpoint)}, EXECUTABLES, tmp_path)
    with RosProcess(cmd, log=tmp_path / "node.log") as node:
        assert node.wait_for_output(READY_LINE, 90), node.output()[-3000:]
        assert node.stop() == 0
    ready = next(line for line in node.output().splitlines() if READY_LINE in line)
    assert f"checkpoint={checkpoint}" in ready and "[perception.aqr_perception]" in ready, ready
