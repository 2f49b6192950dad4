"""The ROS package metadata, launch file and entry points hang together."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from catkin_pkg.package import parse_package

from aqr_perception.config import load_config

REPO = Path(__file__).resolve().parent.parent


def test_package_xml_declares_the_ros_dependencies():
    pkg = parse_package(str(REPO / "package.xml"))
    assert pkg.name == "aqr_perception" and pkg.package_format == 3
    deps = {d.name for d in pkg.build_depends + pkg.exec_depends + pkg.buildtool_depends}
    for needed in ("rclpy", "sensor_msgs", "vision_msgs", "visualization_msgs", "diagnostic_msgs",
                   "std_msgs", "geometry_msgs", "rosidl_default_generators", "tf2_msgs"):
        assert needed in deps, needed
    assert "rosidl_interface_packages" in [g.name for g in pkg.member_of_groups]


def test_cmake_generates_every_msg_file():
    cmake = (REPO / "CMakeLists.txt").read_text()
    listed = set(re.findall(r'"msg/(\w+)\.msg"', cmake))
    assert listed == {p.stem for p in (REPO / "msg").glob("*.msg")}
    for script in re.findall(r"scripts/([\w-]+)", cmake):
        assert os.access(REPO / "scripts" / script, os.X_OK), script


def test_launch_file_names_real_executable_and_params():
    tree = ast.parse((REPO / "launch" / "aqr_perception.launch.py").read_text())
    consts = {t.targets[0].id: t.value.value for t in tree.body
              if isinstance(t, ast.Assign) and isinstance(t.value, ast.Constant)}
    assert consts["PACKAGE"] == "aqr_perception"
    assert (REPO / "config" / consts["DEFAULT_PARAMS"]).is_file()
    args = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
            and getattr(c.func, "id", "") == "DeclareLaunchArgument"}
    assert args == {"params_file", "namespace", "use_sim_time", "checkpoint", "autostart"}
    # autostart reaches the node as its parameter of that name (ros/node.py declares it)
    params = [k.value for c in ast.walk(tree) if isinstance(c, ast.Dict) for k in c.keys
              if isinstance(k, ast.Constant)]
    assert "autostart" in params and "use_sim_time" in params
    # the executable the launch file runs is a console script of setup.py and an
    # installed program of CMakeLists.txt (ros2 run / launch in a colcon workspace)
    setup = (REPO / "setup.py").read_text()
    assert f'"{consts["EXECUTABLE"]} = aqr_perception.ros.node:main"' in setup
    assert f"scripts/{consts['EXECUTABLE']}" in (REPO / "CMakeLists.txt").read_text()


def test_console_scripts_run():
    bindir = Path(sys.executable).parent
    out = subprocess.run([bindir / "aqr-perception", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "demo" in out.stdout
    out = subprocess.run([bindir / "aqr-perception", "config", "schema", "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = subprocess.run([bindir / "aqr-perception", "config", "show", "--config", "tiny", "--set",
                            "model.aqr.mode=global"], capture_output=True, text=True, timeout=60)   # as the README
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["model"]["aqr"]["mode"] == "global" != load_config("tiny").model.aqr.mode
    bad = subprocess.run([bindir / "aqr-perception", "config", "show", "--set", "model.nope=1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "model.nope: unknown key" in bad.stderr
    # pass-through subcommands take their own options directly
    train = subprocess.run([bindir / "aqr-perception", "train", "--data", "/nonexistent", "--quiet"],
                           capture_output=True, text=True, timeout=120)
    assert train.returncode == 2 and "/nonexistent: no such file or folder" in train.stderr
    play = subprocess.run([bindir / "aqr-perception", "play", "--help"], capture_output=True, text=True, timeout=60)
    assert play.returncode == 0 and "--exclude" in play.stdout


def test_readme_lists_the_rosdep_keys_of_package_xml():
    pkg = parse_package(str(REPO / "package.xml"))
    keys = {d.name for d in pkg.buildtool_depends + pkg.build_depends + pkg.exec_depends + pkg.test_depends}
    readme = (REPO / "README.md").read_text()
    para = readme[readme.index("The rosdep keys `package.xml` names:"):]
    para = para[:para.index("\n\n")]
    listed = set(re.findall(r"`([\w-]+)`", para)) - {"package"}
    assert listed == keys
    skipped = re.search(r'--skip-keys "([^"]+)"', readme).group(1).split()
    assert set(skipped) <= keys
