"""The package in a stock ROS 2 workspace, as a ROS developer builds it.

The repository goes into a temporary workspace's ``src/`` together with the interface
stand-ins it needs (``interfaces/vision_msgs``, ``interfaces/tf2_msgs``), a real
``colcon build`` (colcon-common-extensions, the ament / rosidl wheels of the venv as the
underlay) installs it, and the installed executable, run from outside the source tree
with ``install/setup.bash`` sourced, answers a played drive with detections. A second,
overlay workspace builds the package again with ``--symlink-install``.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV_SH = REPO / "scripts" / "env.sh"
PY_SITE = Path("lib") / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
BUILD_TIMEOUT_S = 600

pytestmark = [pytest.mark.slow, pytest.mark.ros]


def _bash(script: str, cwd: Path, timeout: float = BUILD_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``script`` in bash with the development environment (the venv as ROS underlay)."""
    return subprocess.run(["bash", "-c", f"source {ENV_SH} && {script}"], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _copy_source_package(dst: Path) -> None:
    """Copy the files git knows (tracked, or new and not ignored): what a clone holds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _colcon_build(ws: Path, *args: str, underlay: Path | None = None) -> None:
    source = f"source {underlay / 'setup.bash'} && " if underlay else ""
    out = _bash(f"{source}colcon build --event-handlers console_direct- {' '.join(args)} "
                "--cmake-args -DBUILD_TESTING=OFF", ws)
    assert out.returncode == 0, f"colcon build failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace with the package and the stand-ins in src/, built with plain colcon."""
    ws = tmp_path_factory.mktemp("ws")
    _copy_source_package(ws / "src" / "aqr_perception")
    for iface in ("vision_msgs", "tf2_msgs"):
        shutil.copytree(REPO / "interfaces" / iface, ws / "src" / iface)
    _colcon_build(ws)
    return ws


def _package_modules() -> list[str]:
    """Every module of the source package, by dotted name."""
    root = REPO / "aqr_perception"
    mods = []
    for py in sorted(root.rglob("*.py")):
        parts = py.relative_to(REPO).with_suffix("").parts
        mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return mods


def _check_imports_from(ws: Path, cwd: Path) -> None:
    """In the environment ``ws/install/setup.bash`` gives, every module of the package (and
    the generated msg module and bundled checkpoint) resolves inside the install tree."""
    install = ws / "install" / "aqr_perception"
    script = (
        "import importlib, sys\n"
        f"mods = {_package_modules()!r} + ['aqr_perception.msg']\n"
        "for m in mods:\n"
        "    f = importlib.import_module(m).__file__\n"
        f"    assert f.startswith({str(install)!r}), (m, f)\n"
        "from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, PACKAGE_RESOURCES\n"
        "print(BUNDLED_CHECKPOINT.is_file(), (PACKAGE_RESOURCES / 'default_drive' / 'metadata.yaml').is_file())\n")
    out = subprocess.run(
        ["bash", "-c", f"source {ENV_SH} && source {ws / 'install' / 'setup.bash'} && python -c \"$AQR_CHECK\""],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "AQR_CHECK": script})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "True"]


def test_install_tree_holds_the_package_its_messages_and_resources(workspace):
    install = workspace / "install" / "aqr_perception"
    pkg = install / PY_SITE / "aqr_perception"
    assert (pkg / "__init__.py").read_text() == (REPO / "aqr_perception" / "__init__.py").read_text()
    assert (pkg / "msg" / "__init__.py").is_file() and list((pkg / "msg").glob("_detection_velocity_array.py"))
    assert (pkg / "resources" / "cmt_aqr_tiny.pt").stat().st_size == \
        (REPO / "aqr_perception" / "resources" / "cmt_aqr_tiny.pt").stat().st_size
    assert (pkg / "resources" / "default_drive" / "default_drive.mcap").is_file()
    share = install / "share" / "aqr_perception"
    for sub, pattern in (("config", "*.yaml"), ("launch", "*.launch.py"), ("rviz", "*.rviz"),
                         ("schema", "*.json"), ("msg", "*.msg")):
        assert {p.name for p in (share / sub).glob(pattern)} == \
            {p.name for p in (REPO / sub).glob(pattern)}, sub
    for exe in ("aqr_perception_node", "aqr-perception"):
        assert os.access(install / "lib" / "aqr_perception" / exe, os.X_OK), exe
    _check_imports_from(workspace, cwd=workspace.parent)


def test_installed_node_answers_a_played_drive(workspace, ros_context, tmp_path):
    from vision_msgs.msg import Detection3DArray

    from aqr_perception.ros.node_process import NodeProcess, Probe, RosProcess, node_topic

    install = workspace / "install"
    exe = install / "aqr_perception" / "lib" / "aqr_perception"
    bag = install / "aqr_perception" / PY_SITE / "aqr_perception" / "resources" / "default_drive"
    # the installed programs, run as a user does: the workspace's setup.bash sourced
    sourced = ["bash", "-c", f"source {ENV_SH} && source {install / 'setup.bash'} && exec \"$@\"", "bash"]
    with Probe("colcon_probe", ros_context) as probe:
        got = probe.collect(Detection3DArray, node_topic("detections"))
        with NodeProcess(["-p", "score_threshold:=0.0", "-p", "qos_reliability:=reliable",
                          "-p", "sync.calibration_wait_s:=0.5"], log=tmp_path / "node.log", cwd=tmp_path,
                         executable=[*sourced, str(exe / "aqr_perception_node")]) as node:
            with RosProcess([*sourced, str(exe / "aqr-perception"), "play", str(bag), "--rate", "0.2",
                             "--linger", "3", "--wait-for", "/LIDAR_TOP", "/CAM_FRONT/image_rect_compressed", "/tf"],
                            log=tmp_path / "play.log", cwd=tmp_path) as player:
                probe.spin_until(lambda: not player.running(), 150, step_s=0.1)
                probe.spin(3.0)
                assert player.wait(timeout_s=10) == 0, player.output()[-3000:]
            node.stop(timeout_s=20)
    log = node.output()
    assert node.returncode == 0, log[-3000:]
    assert f"checkpoint={install / 'aqr_perception' / PY_SITE / 'aqr_perception' / 'resources'}" in log, log[-3000:]
    assert len(got) >= 3 and any(len(d.detections) > 0 for d in got), f"{len(got)} arrays\n{log[-3000:]}"
    assert all(d.header.frame_id == "LIDAR_TOP" for d in got)


def test_symlink_install_overlay_builds_and_imports(workspace, tmp_path):
    overlay = tmp_path / "overlay_ws"
    _copy_source_package(overlay / "src" / "aqr_perception")
    _colcon_build(overlay, "--symlink-install", underlay=workspace / "install")
    install = overlay / "install" / "aqr_perception"
    init = install / PY_SITE / "aqr_perception" / "__init__.py"
    assert init.is_symlink() and init.resolve() == overlay / "src" / "aqr_perception" / "aqr_perception" / "__init__.py"
    assert (install / PY_SITE / "aqr_perception" / "msg" / "__init__.py").is_file()
    _check_imports_from(overlay, cwd=tmp_path)
