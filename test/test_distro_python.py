"""The README's install path for a machine with a ROS distro, on a PEP 668 distro Python.

A ROS distro's Python is the system one (Debian 12, Ubuntu 24.04), which refuses
``pip install`` (``externally-managed-environment``). The README makes a venv with
``--system-site-packages``: pip works there and the distro's packages stay visible. This
machine's Debian 12 Python (``/usr/bin/python3``, with its ``EXTERNALLY-MANAGED`` marker
and Debian's ``python3-yaml`` in dist-packages) is such a Python; the test follows the
README's commands on it.
"""
import subprocess
import sysconfig
from pathlib import Path

import pytest

SYSTEM_PYTHON = Path("/usr/bin/python3")
REPO = Path(__file__).resolve().parent.parent


def _marker(python: Path) -> Path | None:
    """The EXTERNALLY-MANAGED file of ``python``'s stdlib (PEP 668), if any."""
    if not python.exists():
        return None
    stdlib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    marker = Path(stdlib) / "EXTERNALLY-MANAGED"
    return marker if marker.is_file() else None


@pytest.mark.skipif(_marker(SYSTEM_PYTHON) is None, reason="needs a PEP 668 distro Python at /usr/bin/python3")
def test_system_site_packages_venv_takes_pip_and_sees_the_distro(tmp_path):
    # what a user meets first: the distro's pip refuses
    refused = subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "install", "--dry-run", "--no-deps", "einops"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr
    # the README's way: a venv that still sees the distro's packages
    venv = tmp_path / "aqr-venv"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # pip installs into it (a local wheel of this package's pure-Python sources: no download)
    wheel_dir = tmp_path / "wheels"
    built = subprocess.run([str(py), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir),
                            str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheel_dir.glob("aqr_perception-*.whl"))
    installed = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # ...and the distro's Debian-packaged modules are still importable next to it
    probe = subprocess.run([str(py), "-c", "import sys, yaml, aqr_perception as c; "
                                           "print(sys.prefix, yaml.__file__, c.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    prefix, yaml_file, config_file = probe.stdout.split()
    assert Path(prefix) == venv
    assert yaml_file.startswith("/usr/lib/python3/dist-packages/")
    assert config_file.startswith(str(venv))
    assert sysconfig.get_paths()["purelib"] not in yaml_file   # not this test runner's venv
