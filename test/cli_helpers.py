"""The ``aqr-perception`` command as a user runs it: the console script of this venv."""
import subprocess
import sys
from pathlib import Path

CLI = Path(sys.executable).parent / "aqr-perception"


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``aqr-perception ARGS`` in a child process; stdout and stderr captured as text."""
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout)
