"""A rosbags typestore that knows this project's messages, built from the .msg files.

rosbags is the independent reference for the wire format: its CDR (de)serializer and
its RIHS01 type-hash implementation share no code with rosidl/rclpy.
"""
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

REPO = Path(__file__).resolve().parent.parent
MSG_DIRS = {
    "aqr_perception": REPO / "msg",
    "vision_msgs": REPO / "interfaces" / "vision_msgs" / "msg",
}


def project_typestore():
    """Kilted typestore + vision_msgs stand-in + aqr_perception messages."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for pkg, folder in MSG_DIRS.items():
        for f in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(f.read_text(), f"{pkg}/msg/{f.stem}"))
    store.register(types)
    return store
