"""ROS programs as processes of their own, and a node in this process to talk to them.

"Start the node as a process, wait until it is ready, talk to it over DDS, stop it" is
what evaluation replay, the soak benchmark, the loopback check and the tests do; this is
the one implementation:

* :class:`RosProcess`: a program (the node, the player, a publisher) in a session of its
  own, its output in a log file or this process's terminal, stopped with SIGINT to its
  process group as a terminal's Ctrl-C does (a SIGKILLed DDS participant would leave its
  shared-memory segment behind), SIGKILL only for one that ignores it;
* :class:`NodeProcess`: the aqr_perception node; :meth:`NodeProcess.wait_ready` waits
  for its "ready:" line (the node is active);
* :class:`Probe`: a node in this process with its own context and executor that
  collects topics and spins until a condition holds;
* :func:`node_topic`: the node's output topic names, derived from its name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile

from aqr_perception.config import NODE_NAME
from aqr_perception.ros.dds_env import apply_loopback_dds_defaults

#: the line the node logs when it is active
READY_LINE = "ready:"
#: a stopped process has this long to exit before SIGKILL
STOP_TIMEOUT_S = 30.0


def node_topic(name: str, namespace: str = "", node_name: str = NODE_NAME) -> str:
    """The node's ``~/<name>`` topic: ``/<namespace>/<node_name>/<name>``."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{node_name}/{name}"


def node_command(*ros_args: str, executable: Sequence[str] | None = None) -> list[str]:
    """The node's command line (``python -m aqr_perception.ros.node`` unless ``executable``)."""
    exe = list(executable) if executable else [sys.executable, "-m", "aqr_perception.ros.node"]
    return [*exe, "--ros-args", *ros_args] if ros_args else exe


def player_command(bag: str | Path, *args: str) -> list[str]:
    """``aqr-perception play`` (the bag player) as a command line."""
    return [sys.executable, "-m", "aqr_perception.ros.player", str(bag), *args]


class RosProcess:
    """A ROS program as a process; a context manager that stops it on exit.

    ``log``: a file for its stdout and stderr (None: a temporary file, removed when this
    object is collected or the interpreter exits; ``"inherit"``:
    this process's terminal, e.g. the node's lines during ``aqr-perception eval``).
    """

    def __init__(self, cmd: Sequence[str], log: Path | str | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        apply_loopback_dds_defaults()            # inherited by the child
        self.cmd = list(cmd)
        if log == "inherit":
            self.log, out = None, None
        else:
            if log is None:     # a temporary log: readable after the process ended, removed with this object
                fd, name = tempfile.mkstemp(prefix="aqr_proc_", suffix=".log")
                os.close(fd)
                weakref.finalize(self, Path(name).unlink, missing_ok=True)
                log = name
            self.log = Path(log)
            out = self.log.open("w")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT if out else None, cwd=cwd,
                                         env=env if env is not None else os.environ.copy(), start_new_session=True)
        finally:
            if out is not None:
                out.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """What it has written so far (empty when its output goes to the terminal)."""
        return self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""

    def wait_for_output(self, text: str, timeout_s: float) -> bool:
        """Until ``text`` appears in its output; False when it exits or the time is up first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.running():
                return text in self.output()
            time.sleep(0.05)
        return False

    def wait(self, timeout_s: float | None = None) -> int:
        return self.proc.wait(timeout=timeout_s)

    def interrupt(self, sig: signal.Signals = signal.SIGINT) -> None:
        """SIGINT (a terminal's Ctrl-C), or ``sig`` (SIGTERM: systemd), to its process group."""
        if self.running():
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Ctrl-C, then SIGKILL only if it is still there after ``timeout_s``; the exit code."""
        self.interrupt()
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def __enter__(self) -> RosProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NodeProcess(RosProcess):
    """The aqr_perception node as a process: ``NodeProcess(["-p", "score_threshold:=0.0"])``."""

    def __init__(self, ros_args: Sequence[str] = (), log: Path | str | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None, executable: Sequence[str] | None = None,
                 namespace: str = "") -> None:
        self.namespace = namespace
        super().__init__(node_command(*ros_args, executable=executable), log, cwd, env)

    def topic(self, name: str) -> str:
        return node_topic(name, self.namespace)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the node is active; RuntimeError with its output when it exits or hangs first."""
        if self.log is None:
            raise RuntimeError("wait_ready needs the node's output in a log file")
        if not self.wait_for_output(READY_LINE, timeout_s):
            state = f"exited with code {self.poll()}" if not self.running() else f"not ready after {timeout_s:.0f} s"
            raise RuntimeError(f"the node {state}:\n{self.output()[-3000:]}")


class Probe:
    """A node in this process (own context and executor) that listens and spins.

    ``with Probe("name") as probe: got = probe.collect(Detection3DArray, topic)``; pass
    ``context`` to use one that exists (the tests' ``ros_context``)."""

    def __init__(self, name: str, context: Context | None = None) -> None:
        apply_loopback_dds_defaults()
        self._own_context = context is None
        self.context = context or Context()
        if self._own_context:
            rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def collect(self, msg_type: type, topic: str, qos: QoSProfile | int = 50,
                into: Callable[[Any], None] | None = None) -> list:
        """Subscribe; the messages go into the returned list (or to ``into``)."""
        got: list = []
        self.node.create_subscription(msg_type, topic, into or got.append, qos)
        return got

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    def spin_until(self, condition: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
        """Spin until ``condition()`` holds (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return False
            self.executor.spin_once(timeout_sec=step_s)
        return True

    def wait_for_publishers(self, topics: Sequence[str], timeout_s: float) -> bool:
        """Spin until every topic has a publisher in the graph (e.g. the node's outputs,
        created when it activates): what it publishes from then on reaches ``collect``."""
        return self.spin_until(lambda: all(self.node.count_publishers(t) > 0 for t in topics), timeout_s)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        if self._own_context and self.context.ok():
            rclpy.shutdown(context=self.context)

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
