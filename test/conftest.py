"""Test-wide setup: loopback-only DDS and a private ROS domain for this test run.

Every rclpy context created by a test (in this process or a child) inherits these
variables, so no test traffic leaves the host and concurrent runs do not see each other.
The test process keeps freed memory as the node and the CLI do (``keep_freed_memory``,
their default), so that in-process model runs allocate as they do for a user.
"""
import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "test"))

from aqr_perception.allocator import keep_freed_memory  # noqa: E402
from aqr_perception.ros.dds_env import apply_loopback_dds_defaults  # noqa: E402

apply_loopback_dds_defaults()
keep_freed_memory()
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("ROS_LOG_DIR", str(REPO / "build" / "ros_log"))


@pytest.fixture
def ros_context():
    """A fresh rclpy context, shut down after the test."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    if ctx.ok():
        rclpy.shutdown(context=ctx)


@pytest.fixture
def segment_padding_checks(monkeypatch):
    """A list that grows by one at every call of fused_attention.segment_padding (the
    per-segment padding check, a host sync on CUDA); the function itself still runs."""
    from aqr_perception.model import fused_attention

    checks = []
    real = fused_attention.segment_padding
    monkeypatch.setattr(fused_attention, "segment_padding", lambda *a: checks.append(1) or real(*a))
    return checks
