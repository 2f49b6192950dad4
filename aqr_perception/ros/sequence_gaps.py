"""Messages a publisher sent that never reached our callback, from DDS sequence numbers.

A subscription with KEEP_LAST history silently overwrites the oldest waiting sample when
the executor falls behind, and Fast DDS raises no ``message_lost`` event for that. Every
sample carries its writer's ``publication_sequence_number`` (rmw MessageInfo), so a jump
in it is exactly the number of samples this reader never handed to us. No rclpy import:
``info`` is the MessageInfo dict rclpy passes to two-argument callbacks.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SequenceGaps:
    """Per-publisher gap counter for one subscription."""

    def __init__(self) -> None:
        self._last: dict[bytes, int] = {}
        self.missed = 0

    def observe(self, info: Mapping[str, Any]) -> int:
        """Record one received sample; returns how many of its publisher's samples were skipped.

        The first sample of a publisher only sets the baseline (what it published before
        we matched was never meant for us); middleware without sequence numbers gives 0.
        """
        seq, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
        if not seq or not gid:
            return 0
        key = bytes(gid["data"]) if isinstance(gid, Mapping) else bytes(gid)
        last = self._last.get(key)
        self._last[key] = max(seq, last or 0)
        if last is None or seq <= last:
            return 0
        gap = seq - last - 1
        self.missed += gap
        return gap
