"""Time stamps as integer nanoseconds (the key everything is matched by: samples, GT, /tf).

Duck-typed over ``builtin_interfaces/Time`` (rclpy messages and rosbags dataclasses alike,
anything with ``sec`` and ``nanosec``), so neither ROS nor rosbags is imported here.
"""
from __future__ import annotations

NS = 1_000_000_000   # nanoseconds per second


def time_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` -> nanoseconds."""
    return int(stamp.sec) * NS + int(stamp.nanosec)


def header_ns(msg) -> int:
    """Nanoseconds of a stamped message's ``header.stamp``."""
    return time_to_ns(msg.header.stamp)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) for a ``builtin_interfaces/Time``."""
    return int(stamp_ns // NS), int(stamp_ns % NS)
