"""Record a run to one MCAP (stands in for ``ros2 bag record``, which is not on PyPI).

Topics received over DDS are taken as serialised bytes (``raw=True`` subscriptions) and
written as they came, with rosbags' MCAP writer; messages this process publishes itself
(the player's) are written by :meth:`Recorder.write`. The log time of every message is
the replay's clock (the bag time the player last published as ``/clock``), so the
recording plays back in step with its inputs (``ros2 bag play``, Foxglove, RViz).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer

from aqr_perception.data.typestore import project_typestore
from aqr_perception.ros.msg_types import get_message


class Recorder:
    """An MCAP rosbag2 at ``path``; ``clock()`` gives the log time (ns) of what is received."""

    def __init__(self, path: Path, clock: Callable[[], int]) -> None:
        self.path = Path(path)
        self.clock = clock
        self._store = project_typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns: dict[str, object] = {}
        self._subscriptions: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, msgtype: str, stamp_ns: int, raw: bytes) -> None:
        """One serialised message of ``msgtype`` on ``topic`` at log time ``stamp_ns``."""
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self._store)
        self._writer.write(self._conns[topic], stamp_ns, bytes(raw))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def subscribe(self, node, topic: str, msgtype: str, depth: int = 100) -> None:
        """Record ``topic`` as received by ``node`` (reliable, keep-last ``depth``)."""
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self._subscriptions[topic] = node.create_subscription(
            get_message(msgtype), topic, lambda raw: self.write(topic, msgtype, self.clock(), raw), qos, raw=True)

    def unmatched(self) -> list[str]:
        """The subscribed topics no publisher is matched with yet: what is published on them
        now is lost (volatile durability), as ``ros2 bag record`` loses it before discovery."""
        return [t for t, sub in self._subscriptions.items() if sub.get_publisher_count() == 0]

    def close(self) -> None:
        self._writer.close()
