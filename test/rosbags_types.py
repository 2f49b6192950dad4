"""The rosbags typestore of the project (rosbags is the independent wire-format reference:
its CDR (de)serializer and RIHS01 implementation share no code with rosidl/rclpy)."""
from aqr_perception.data.typestore import project_typestore  # noqa: F401
