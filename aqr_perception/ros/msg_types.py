"""'pkg/msg/Type' -> rclpy message class (stands in for rosidl_runtime_py.utilities.get_message)."""
from __future__ import annotations

import importlib


def get_message(msgtype: str):
    """Import the rclpy class of ``pkg/msg/Type`` (also accepts ``pkg/Type``)."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or parts[1] != "msg":
        raise ValueError(f"not a message type name: {msgtype!r}")
    return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
