"""Acceptance: a publisher process and a subscriber process exchange the node's output
messages over loopback DDS, and nothing binds outside the loopback interface."""
import math
import os
import signal
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from dds_peer import exchange, frame_stamp, publisher_command, sample_frame

from aqr_perception.config import NUSCENES_CLASSES
from aqr_perception.ros.node_process import RosProcess

COUNT = 6


def test_two_processes_exchange_detections_and_routing():
    res = exchange(count=COUNT, timeout_s=40.0)
    assert res.publisher_rc == 0
    assert len(res.detections) == COUNT and len(res.routing) == COUNT
    for i, (det_msg, rout_msg) in enumerate(zip(res.detections, res.routing)):
        expected = sample_frame(i)
        assert (det_msg.header.stamp.sec, det_msg.header.stamp.nanosec) == frame_stamp(i)
        assert rout_msg.header == det_msg.header
        assert len(det_msg.detections) == len(expected) == len(rout_msg.detections)
        for k, d in enumerate(det_msg.detections):
            p = d.bbox.center.position
            np.testing.assert_allclose([p.x, p.y, p.z], expected.boxes[k, :3])
            np.testing.assert_allclose([d.bbox.size.x, d.bbox.size.y, d.bbox.size.z], expected.boxes[k, 3:6])
            yaw = 2 * math.atan2(d.bbox.center.orientation.z, d.bbox.center.orientation.w)
            assert abs(math.remainder(yaw - expected.boxes[k, 6], 2 * math.pi)) < 1e-9
            assert d.results[0].hypothesis.class_id == NUSCENES_CLASSES[expected.labels[k]]
            assert d.results[0].hypothesis.score == pytest.approx(expected.scores[k])
            r = rout_msg.detections[k]
            assert r.id == d.id and r.query_index == expected.query_index[k]
            assert r.lidar_weight == pytest.approx(expected.lidar_weight[k, -1], rel=1e-6)
            assert r.camera_weight == pytest.approx(expected.camera_weight[k, -1], rel=1e-6)


def _udp_local_addresses(pid):
    """Local addresses of the UDP sockets a process holds (from /proc, IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addrs = []
    for table, fam in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] not in inodes:
                continue
            hexaddr = cols[1].split(":")[0]
            raw = bytes.fromhex(hexaddr)
            if fam == socket.AF_INET:
                addrs.append(socket.inet_ntop(fam, struct.pack("<I", struct.unpack(">I", raw)[0])))
            else:
                words = [struct.pack("<I", struct.unpack(">I", raw[j:j + 4])[0]) for j in range(0, 16, 4)]
                addrs.append(socket.inet_ntop(fam, b"".join(words)))
    return addrs


def _fastdds_segments() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("fastdds_*")} if shm.is_dir() else set()


@pytest.mark.parametrize("source_env_script", [True, False], ids=["env.sh", "python-defaults"])
def test_rclpy_process_binds_only_loopback(source_env_script):
    env = os.environ.copy()
    if not source_env_script:  # a forgotten `source scripts/env.sh`: the entry point must cover it
        for var in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE", "ROS_LOCALHOST_ONLY"):
            env.pop(var, None)
    shm_before = _fastdds_segments()
    with RosProcess(publisher_command(1, 6), env=env) as child:
        addrs = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and child.running():
            addrs = _udp_local_addresses(child.pid)
            if len(addrs) >= 2:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # let the participant finish creating its locators
        addrs = _udp_local_addresses(child.pid) or addrs
        segments = _fastdds_segments() - shm_before
        child.interrupt(signal.SIGTERM)            # as ros2 launch / systemd stop a node
        child.wait(timeout_s=10)
    assert addrs, "the DDS participant opened no UDP socket (did rclpy start?)"
    outside = [a for a in addrs if not (a.startswith("127.") or a == "::1")]
    assert not outside, f"DDS sockets bound beyond loopback: {outside} (all: {addrs})"
    # the shared-memory transport was in use, and a stopped participant removes its segment
    # (128 MiB with the project's profile; a SIGKILLed one cannot: /dev/shm fills up run after run)
    assert segments, "no Fast DDS shared-memory segment appeared: is the SHM transport of the profile in use?"
    assert not (segments & _fastdds_segments()), "segments left in /dev/shm after SIGTERM"


def test_two_processes_find_each_other_after_many_participants():
    """Loopback discovery has no multicast: participants announce themselves to the unicast
    ports of the first N participant ids only (Fast DDS's default N is 4). With six
    participants already up on the domain, the publisher and the receiver get ids beyond
    that, and must still discover each other (a vehicle runs dozens of ROS processes)."""
    import rclpy
    from rclpy.context import Context

    crowd = []
    try:
        for i in range(6):
            ctx = Context()
            rclpy.init(context=ctx)
            crowd.append((ctx, rclpy.create_node(f"crowd_{i}", context=ctx)))
        res = exchange(count=2, timeout_s=40.0)
        assert res.publisher_rc == 0 and len(res.detections) == 2 and len(res.routing) == 2
    finally:
        for ctx, node in crowd:
            node.destroy_node()
            rclpy.shutdown(context=ctx)
