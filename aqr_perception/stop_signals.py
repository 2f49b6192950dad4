"""Orderly stop on SIGINT / SIGTERM: a signal sets an event, the main loop ends its work.

rclpy's own signal handler shuts the context down the moment Ctrl-C arrives, while other
threads may still be publishing (the node's inference worker), which then fail with
"publisher's context is invalid". The project's rclpy processes call
``rclpy.init(..., signal_handler_options=SignalHandlerOptions.NO)`` and use
:class:`StopSignals` instead: a signal only sets an event; the main loop sees it, stops its
workers, and only then destroys its nodes and shuts the context down, as ``ros2 bag play``
and rclcpp components do. Training uses it to stop after the step in progress and save
what a resume needs.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

#: what a terminal's Ctrl-C, ``ros2 launch`` and systemd send
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`event` instead of raising.

    ``second_raises``: a second SIGINT raises KeyboardInterrupt at once (for work whose
    steps can be long: the user pressed Ctrl-C twice). A repeated SIGTERM does not: systemd,
    Slurm and torchrun may each send one to the same process. The previous handlers come
    back on exit.
    Entered from another thread it installs nothing (Python delivers signals to the main one).
    """

    def __init__(self, second_raises: bool = False) -> None:
        self.event = threading.Event()
        self.second_raises = second_raises
        #: the first signal received (its number), or None
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set() and self.second_raises and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        self.event.set()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():    # signals reach no other thread
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def is_set(self) -> bool:
        return self.event.is_set()
