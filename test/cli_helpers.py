"""The ``aqr-perception`` command as a user runs it: the console script of this venv."""
import subprocess
import sys
from pathlib import Path

CLI = Path(sys.executable).parent / "aqr-perception"


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``aqr-perception ARGS`` in a child process; stdout and stderr captured as text."""
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def play_while_spinning(executor, *args, timeout: float = 60) -> tuple[int, str]:
    """Run ``aqr-perception play ARGS`` while ``executor`` spins (its subscribers receive
    what is played, and what is still in flight after the player ends); (exit code, stderr)."""
    import time

    play = subprocess.Popen([str(CLI), "play", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + timeout
        while play.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for _ in range(20):
            executor.spin_once(timeout_sec=0.05)
    finally:
        if play.poll() is None:
            play.kill()
        _, err = play.communicate(timeout=10)
    return play.returncode, err
