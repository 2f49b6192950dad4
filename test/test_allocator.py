"""keep_freed_memory: a frame's large blocks are reused instead of faulted in again.

The reference is the kernel's own count of minor page faults (getrusage) while a process
allocates and frees a frame's worth of large buffers, as the node does every frame. Each
case runs in a fresh process: mallopt settings are process-wide and cannot be undone.
"""
import subprocess
import sys
import textwrap

import pytest

from aqr_perception import allocator

#: one "frame": six 1600x900 rgb8 images and two 8 MB activations, all alive together, then freed
FRAME_WORKLOAD = """
import resource
import numpy as np

def faults_per_frame(frames=12):
    def frame():
        bufs = [np.ones(900 * 1600 * 3, np.uint8) for _ in range(6)] + [np.ones(2 << 20, np.float32) for _ in range(2)]
        return sum(int(b[-1]) for b in bufs)
    frame()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(frames):
        frame()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / frames
"""


def _run(body: str) -> float:
    script = FRAME_WORKLOAD + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(not allocator.available(), reason="not glibc: no mallopt")


def test_freed_blocks_are_reused_instead_of_faulted_in():
    default = _run("print(faults_per_frame())")
    tuned = _run("""
        from aqr_perception.allocator import keep_freed_memory
        assert keep_freed_memory()
        print(faults_per_frame())
    """)
    # 57 MB per frame: ~14,000 4 kB pages faulted in again by default (fewer with huge pages)
    assert default >= 10, default
    assert tuned <= default / 10, (tuned, default)


NODE_CASE = """
from aqr_perception.ros.dds_env import apply_loopback_dds_defaults
apply_loopback_dds_defaults()
import rclpy
from aqr_perception.ros.node import AqrPerceptionNode, start_node
rclpy.init()
node = AqrPerceptionNode(cli_args=["--ros-args", "-p", "keep_freed_memory:={value}"])
start_node(node)
node.runtime.warm_up()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    node.runtime.warm_up()
model = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(model + faults_per_frame())
"""


def test_the_configured_node_applies_it_and_its_default_is_on():
    from aqr_perception.config import NodeConfig

    assert NodeConfig().keep_freed_memory
    off = _run(NODE_CASE.format(value="false"))
    on = _run(NODE_CASE.format(value="true"))
    assert off >= 10, off
    assert on <= off / 4, (on, off)        # measured: 14,200 -> 1,060 faults per frame
