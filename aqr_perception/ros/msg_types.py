"""Message type names <-> rclpy message classes (stands in for rosidl_runtime_py.utilities)."""
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


def message_type_name(msg_class: type) -> str:
    """The ``pkg/msg/Type`` name of an rclpy message class (the inverse of :func:`get_message`)."""
    return f"{msg_class.__module__.split('.')[0]}/msg/{msg_class.__name__}"


def ros_type_name(dds_type: str) -> str:
    """``sensor_msgs::msg::dds_::Image_`` (a DDS type name, as the ROS graph gives it for a
    topic asked ``no_mangle``) -> ``sensor_msgs/msg/Image``; a ROS type name is returned as is."""
    if "::" not in dds_type:
        return dds_type
    return dds_type.replace("::dds_::", "::").removesuffix("_").replace("::", "/")
