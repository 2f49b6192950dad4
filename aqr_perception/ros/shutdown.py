"""Orderly stop on SIGINT / SIGTERM for the project's rclpy processes.

rclpy's own signal handler shuts the context down the moment Ctrl-C arrives, while other
threads may still be publishing (the node's inference worker), which then fail with
"publisher's context is invalid". Processes that use :class:`StopSignals` call
``rclpy.init(..., signal_handler_options=SignalHandlerOptions.NO)`` instead: a signal
only sets an event; the main loop sees it, stops its workers, and only then destroys its
nodes and shuts the context down, as ``ros2 bag play`` and rclcpp components do.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

#: what a terminal's Ctrl-C, ``ros2 launch`` and systemd send
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`event` instead of raising.

    The previous handlers come back on exit. Must be entered from the main thread (Python
    delivers signals there only).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, object] = {}

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.event.set()

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def is_set(self) -> bool:
        return self.event.is_set()
