"""A DDS peer process for test_dds_exchange.py: the node's output messages, exchanged
between two processes over loopback.

``exchange(count)`` starts a publisher in a child process (``python test/dds_peer.py
publish``) that sends ``count`` frames of Detection3DArray + QueryRouting built from
:func:`sample_frame`, and receives them in this process.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aqr_perception.config import NUSCENES_CLASSES
from aqr_perception.detections import FrameDetections
from aqr_perception.ros.dds_env import apply_loopback_dds_defaults

DETECTIONS_TOPIC = "/aqr_loopback_check/detections"
ROUTING_TOPIC = "/aqr_loopback_check/routing"
FRAME_PERIOD_S = 0.05
NUM_LAYERS = 3


def sample_frame(index: int, num: int = 5) -> FrameDetections:
    """Deterministic pseudo-detections for frame ``index`` (same in every process)."""
    rng = np.random.default_rng(1000 + index)
    boxes = np.concatenate([rng.uniform(-40, 40, (num, 2)), rng.uniform(-1, 1, (num, 1)),
                            rng.uniform(0.5, 5, (num, 3)), rng.uniform(-np.pi, np.pi, (num, 1)),
                            rng.uniform(-3, 3, (num, 2))], axis=1)
    return FrameDetections(boxes=boxes, scores=rng.uniform(0.3, 1.0, num),
                           labels=rng.integers(0, len(NUSCENES_CLASSES), num),
                           query_index=rng.choice(900, num, replace=False),
                           lidar_weight=rng.uniform(0, 1, (num, NUM_LAYERS)),
                           camera_weight=rng.uniform(0, 1, (num, NUM_LAYERS)))


def frame_stamp(index: int) -> tuple[int, int]:
    """(sec, nanosec) of frame ``index``."""
    return 1_700_000_000 + index // 20, (index % 20) * 50_000_000


def _qos():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def publish(count: int, wait_s: float) -> int:
    """Child process: wait for a subscriber on both topics, publish ``count`` frames."""
    apply_loopback_dds_defaults()
    import rclpy
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection3DArray

    from aqr_perception.msg import QueryRouting
    from aqr_perception.ros.detection_msgs import to_detection_array, to_routing_msg

    rclpy.init()
    node = rclpy.create_node("aqr_loopback_publisher")
    det_pub = node.create_publisher(Detection3DArray, DETECTIONS_TOPIC, _qos())
    rout_pub = node.create_publisher(QueryRouting, ROUTING_TOPIC, _qos())
    deadline = time.monotonic() + wait_s
    while (det_pub.get_subscription_count() == 0 or rout_pub.get_subscription_count() == 0):
        if time.monotonic() > deadline:
            print("publisher: no subscriber appeared", file=sys.stderr)
            return 1
        rclpy.spin_once(node, timeout_sec=0.05)
    for i in range(count):
        sec, nsec = frame_stamp(i)
        header = Header(frame_id="LIDAR_TOP")
        header.stamp.sec, header.stamp.nanosec = sec, nsec
        det = sample_frame(i)
        det_pub.publish(to_detection_array(header, det, NUSCENES_CLASSES))
        rout_pub.publish(to_routing_msg(header, det, True, ["CAM_FRONT"], ["CAM_BACK"]))
        time.sleep(FRAME_PERIOD_S)
    # keep the writers alive until the reader has had time to fetch (reliable QoS)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


@dataclass
class ExchangeResult:
    """What the receiving side got."""

    detections: list = field(default_factory=list)
    routing: list = field(default_factory=list)
    arrival_gaps_ms: list = field(default_factory=list)
    publisher_rc: int | None = None
    elapsed_s: float = 0.0


def publisher_command(count: int, wait_s: float) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "publish", "--count", str(count), "--wait", str(wait_s)]


def exchange(count: int = 5, timeout_s: float = 30.0) -> ExchangeResult:
    """Receive ``count`` frames from a publisher child process over DDS."""
    from vision_msgs.msg import Detection3DArray

    from aqr_perception.msg import QueryRouting
    from aqr_perception.ros.node_process import Probe, RosProcess

    res = ExchangeResult()
    t0 = time.monotonic()
    arrivals: list[float] = []

    def on_detections(msg) -> None:
        res.detections.append(msg)
        arrivals.append(time.monotonic())

    with Probe("aqr_loopback_subscriber") as probe:
        probe.collect(Detection3DArray, DETECTIONS_TOPIC, _qos(), into=on_detections)
        probe.collect(QueryRouting, ROUTING_TOPIC, _qos(), into=res.routing.append)
        with RosProcess(publisher_command(count, timeout_s)) as child:
            probe.spin_until(lambda: len(res.detections) >= count and len(res.routing) >= count, timeout_s)
            res.publisher_rc = child.wait(timeout_s=max(1.0, t0 + timeout_s - time.monotonic() + 5.0))
    # frame-to-frame arrival spacing vs the publisher's period says whether delivery kept up
    res.arrival_gaps_ms = [1e3 * (b - a) for a, b in zip(arrivals, arrivals[1:])]
    res.elapsed_s = time.monotonic() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--wait", type=float, default=30.0)
    args = parser.parse_args(argv)
    return publish(args.count, args.wait)


if __name__ == "__main__":
    sys.exit(main())
