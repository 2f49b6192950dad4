"""The package's rooms and their import direction (README "Layout"), checked on the code.

``lint-imports`` (import-linter) holds the contracts of ``.importlinter``: a room imports
only the rooms below it, only the ROS adapters import rclpy, the model is pure torch.
The graph it builds (grimp) also shows that ``ros/`` holds only ROS code. ``ruff``
(``ruff.toml``) lints the package, tests, benchmarks and scripts.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parent.parent
#: imports that make a module ROS code: the client library and the generated interfaces
ROS_IMPORTS = ("rclpy", "rcl_interfaces", "lifecycle_msgs", "builtin_interfaces", "std_msgs", "sensor_msgs",
               "geometry_msgs", "vision_msgs", "visualization_msgs", "diagnostic_msgs", "tf2_msgs", "rosgraph_msgs",
               "aqr_perception.msg")
#: ros/ modules that set up a ROS process without importing its libraries
ROS_PROCESS_HELPERS = {"aqr_perception.ros.dds_env", "aqr_perception.ros.msg_types"}


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name)) if Path(sys.executable).with_name(name).exists() \
        else shutil.which(name) or name


def test_import_contracts_hold():
    out = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_ruff_finds_nothing():
    out = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_the_ros_room_holds_only_ros_code():
    graph = grimp.build_graph("aqr_perception", include_external_packages=True)
    not_ros = []
    for module in sorted(graph.find_children("aqr_perception.ros")):
        if module in ROS_PROCESS_HELPERS or module.endswith("__init__"):
            continue
        imported = graph.find_modules_directly_imported_by(module)
        if not any(m == r or m.startswith(r + ".") for m in imported for r in ROS_IMPORTS):
            not_ros.append(module)
    assert not_ros == [], f"no ROS import, belongs in a lower room (frames/, data/): {not_ros}"
