"""Replay a rosbag2 over DDS (stands in for ``ros2 bag play``, which is not on PyPI).

Serialized messages are published as they are (rclpy publishes raw CDR bytes), at the
bag's pace times ``rate`` (or as fast as a gate allows), optionally with ``/clock``.
/tf_static is re-published with transient-local durability, like tf2's static
broadcaster, so late subscribers still get it. A bag's ground truth (Detection3DArray on
``synth.gt_topic``) is also drawn as RViz markers on ``synth.gt_markers_topic``, beside the
node's own (ros/markers.py), even when the ground truth itself is not played.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from aqr_perception.config import SynthConfig
from aqr_perception.data.bag_order import Message
from aqr_perception.ros.dds_env import apply_loopback_dds_defaults
from aqr_perception.stamps import ns_to_sec_nanosec

#: the message type of a bag's ground truth, drawn as markers
GT_TYPE = "vision_msgs/msg/Detection3DArray"


class BagPlayer:
    """Publishers for a bag's topics on ``node``; :meth:`play` sends the messages."""

    def __init__(self, node, bag: Path, exclude: Iterable[str] = (), include: Iterable[str] | None = None,
                 publish_clock: bool = False, gt_markers: tuple[str, str] | None = None) -> None:
        """gt_markers: (ground-truth topic, markers topic): draw the bag's ground truth."""
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import Reader

        from aqr_perception.ros.msg_types import get_message

        self.node = node
        self.bag = Path(bag)
        excluded = set(exclude)
        allowed = set(include) if include is not None else None
        self._reader_cls = Reader
        self.publishers: dict[str, object] = {}
        self.types: dict[str, str] = {}
        #: (topic, message type) -> (messages in the bag, why) of what is not played: a type not
        #: installed here (a vendor's package; ros2 bag play skips them too), or a second type
        #: on a topic already played as another
        self.unplayable: dict[tuple[str, str], tuple[int, str]] = {}
        self._played: set[int] = set()          # the connections played
        with Reader(self.bag) as reader:
            self.start_ns, self.end_ns = reader.start_time, reader.end_time
            for conn in reader.connections:
                if conn.topic in excluded or (allowed is not None and conn.topic not in allowed):
                    continue
                static = conn.topic == "/tf_static"
                qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100 if not static else 1,
                                 reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE)
                why = None
                if conn.topic in self.publishers:
                    if conn.msgtype != self.types[conn.topic]:
                        why = f"differs from the {self.types[conn.topic]} played on it"
                else:
                    try:
                        msg_class = get_message(conn.msgtype)
                    except (ImportError, AttributeError, ValueError):
                        why = "is not installed here"
                    else:
                        self.publishers[conn.topic] = node.create_publisher(msg_class, conn.topic, qos)
                        self.types[conn.topic] = conn.msgtype
                if why is None:
                    self._played.add(conn.id)
                else:       # one entry per topic and type, over the bag's connections
                    count, _ = self.unplayable.get((conn.topic, conn.msgtype), (0, why))
                    self.unplayable[(conn.topic, conn.msgtype)] = (count + conn.msgcount, why)
            self.gt_topic = None
            if gt_markers is not None and any(c.topic == gt_markers[0] and c.msgtype == GT_TYPE
                                              for c in reader.connections):
                from visualization_msgs.msg import MarkerArray

                self.gt_topic = gt_markers[0]
                self.gt_markers_pub = node.create_publisher(MarkerArray, gt_markers[1], QoSProfile(
                    history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.clock_pub = None
        if publish_clock:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        self.published: dict[str, int] = {t: 0 for t in self.publishers}
        self.gt_markers_published = 0
        #: the bag time last played (what /clock says)
        self.clock_ns = self.start_ns
        #: called with (topic, msgtype, bag time, bytes) for every message published (a recorder)
        self.on_publish: Callable[[str, str, int, bytes], None] | None = None

    def unplayable_lines(self, prog: str) -> list[str]:
        """One warning line per topic not played (ros2 bag play's "Ignoring a topic")."""
        return [f"{prog}: not playing {topic} ({count} messages): its type {msgtype} {why}"
                for (topic, msgtype), (count, why) in sorted(self.unplayable.items())]

    def _publish_gt_markers(self, raw: bytes) -> None:
        from rclpy.serialization import deserialize_message
        from vision_msgs.msg import Detection3DArray

        from aqr_perception.ros.detection_msgs import from_detection_array
        from aqr_perception.ros.markers import ground_truth_markers

        gt = deserialize_message(raw, Detection3DArray)
        boxes, names, _ = from_detection_array(gt)
        self.gt_markers_pub.publish(ground_truth_markers(gt.header, boxes, names))
        self.gt_markers_published += 1

    def wait_for_subscribers(self, topics: Iterable[str], timeout_s: float, spin: Callable[[float], None],
                             should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Spin until every listed (played) topic has a subscriber, or the timeout."""
        deadline = time.monotonic() + timeout_s
        wanted = [t for t in topics if t in self.publishers]
        while time.monotonic() < deadline and not should_stop():
            if all(self.publishers[t].get_subscription_count() > 0 for t in wanted):
                return True
            spin(0.05)
        return False

    def _publish_clock(self, stamp_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = ns_to_sec_nanosec(stamp_ns)
        self.clock_pub.publish(msg)

    def play(self, rate: float = 1.0, spin: Callable[[float], None] | None = None,
             gate: Callable[[str, int], None] | None = None, time_shift_ns: int = 0,
             order: Callable[[Iterable[Message]], Iterable[Message]] | None = None,
             should_stop: Callable[[], bool] | None = None) -> int:
        """Publish every message; returns how many.

        rate: pace factor (<= 0: as fast as possible). spin(seconds): called while
        waiting (to serve the node's own subscriptions). gate(topic, stamp): called
        before each message, may block (e.g. stepwise replay waits for the detector).
        time_shift_ns: added to the bag time for /clock (looping). order: rewrites the
        bag-order message stream (e.g. :func:`~aqr_perception.data.bag_order.pose_first`);
        /clock never goes back when it moves a message ahead. should_stop: checked before
        each message (and while pacing); playback ends early when it returns True.
        """
        spin = spin or (lambda s: time.sleep(s))
        count = 0
        wall0 = time.monotonic()
        clock = None
        with self._reader_cls(self.bag) as reader:
            conns = [c for c in reader.connections if c.id in self._played
                     or (c.topic == self.gt_topic and c.msgtype == GT_TYPE)]
            messages = reader.messages(connections=conns)
            for conn, stamp, raw in (order(messages) if order is not None else messages):
                if should_stop is not None and should_stop():
                    break
                clock = stamp if clock is None else max(clock, stamp)
                if rate > 0:
                    due = wall0 + (clock - self.start_ns) / 1e9 / rate
                    while (left := due - time.monotonic()) > 0 and not (should_stop and should_stop()):
                        spin(min(left, 0.01))
                if gate is not None:
                    gate(conn.topic, stamp)
                if self.clock_pub is not None:
                    self._publish_clock(clock + time_shift_ns)
                if conn.topic == self.gt_topic and conn.msgtype == GT_TYPE:
                    self._publish_gt_markers(bytes(raw))
                self.clock_ns = clock
                if conn.id in self._played:
                    if self.on_publish is not None:
                        self.on_publish(conn.topic, conn.msgtype, stamp, bytes(raw))
                    self.publishers[conn.topic].publish(bytes(raw))
                    self.published[conn.topic] += 1
                    count += 1
        return count


def main(argv: list[str] | None = None) -> int:
    """``aqr-perception play``: replay a bag to DDS from its own process."""
    parser = argparse.ArgumentParser(prog="aqr-perception play", description=__doc__)
    parser.add_argument("bag", type=Path)
    parser.add_argument("--rate", type=float, default=1.0, help="pace factor (<= 0: as fast as possible)")
    parser.add_argument("--exclude", nargs="*", default=[], help="topics not to play (e.g. a withheld camera)")
    parser.add_argument("--clock", action="store_true", help="publish /clock from the bag stamps")
    parser.add_argument("--loop", type=int, default=1, help="play this many times (stamps jump back each time)")
    parser.add_argument("--wait-for", nargs="*", default=[], help="topics whose subscribers to wait for first")
    parser.add_argument("--wait-timeout", type=float, default=30.0)
    parser.add_argument("--linger", type=float, default=1.0, help="seconds to stay up after the last message")
    gt = SynthConfig()
    parser.add_argument("--gt-topic", default=gt.gt_topic, help="the bag's ground truth (Detection3DArray)")
    parser.add_argument("--gt-markers", default=gt.gt_markers_topic,
                        help="draw the ground truth as RViz markers on this topic ('' : not drawn)")
    args = parser.parse_args(argv)
    from aqr_perception.config import ConfigError
    from aqr_perception.data.bag_reader import bag_topics

    try:                                 # a bad path is one line and exit code 2, before any DDS
        topics = set(bag_topics(args.bag))
    except ConfigError as exc:
        print(f"play: {exc}", file=sys.stderr)
        return 2
    for topic in sorted(set(args.exclude) - topics):
        print(f"play: --exclude {topic}: the bag has no such topic (its topics: {', '.join(sorted(topics))})",
              file=sys.stderr)
    apply_loopback_dds_defaults()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from aqr_perception.stop_signals import StopSignals

    with StopSignals() as stop:   # Ctrl-C ends playback cleanly, as with ros2 bag play
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("aqr_bag_player")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin = lambda s: executor.spin_once(timeout_sec=s)  # noqa: E731
        try:
            player = BagPlayer(node, args.bag, exclude=args.exclude, publish_clock=args.clock,
                               gt_markers=(args.gt_topic, args.gt_markers) if args.gt_markers else None)
            for line in player.unplayable_lines("play"):
                print(line, file=sys.stderr)
            if args.wait_for:
                if not player.wait_for_subscribers(args.wait_for, args.wait_timeout, spin, should_stop=stop.is_set):
                    if stop.is_set():
                        return 0
                    print(f"play: no subscriber on {args.wait_for} after {args.wait_timeout} s", file=sys.stderr)
                    return 1
            total = 0
            for _ in range(args.loop):
                if stop.is_set():
                    break
                total += player.play(args.rate, spin, should_stop=stop.is_set)
            end = time.monotonic() + args.linger
            while time.monotonic() < end and not stop.is_set():
                spin(0.05)
            state = "interrupted after" if stop.is_set() else "published"
            drawn = f" (+ {player.gt_markers_published} ground-truth marker arrays on {args.gt_markers})" \
                if player.gt_markers_published else ""
            skipped = sum(count for count, _ in player.unplayable.values())
            unplayed = (f"; not played: {skipped} messages on {len({t for t, _ in player.unplayable})} topic(s), "
                        "as said above") if player.unplayable else ""
            print(f"play: {state} {total} messages from {args.bag}{drawn}{unplayed}")
            return 0
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
