"""``aqr-perception play`` (the ros2 bag play stand-in) as the README writes it, received
over loopback DDS and compared with the bag as rosbags reads it."""
import subprocess
import time

from cli_helpers import CLI

from aqr_perception.model.runtime import PACKAGE_RESOURCES

DRIVE = PACKAGE_RESOURCES / "default_drive"
EXCLUDED, KEPT = "/CAM_BACK/image_rect_compressed", "/CAM_FRONT/image_rect_compressed"


def test_play_with_clock_and_exclude_as_the_readme_writes_it(ros_context):
    """``play BAG --rate 1 --clock --exclude /CAM_BACK/image_rect_compressed``: the excluded
    topic stays silent, a kept one delivers every message, and /clock steps through the
    bag's own receive times, never back, up to its last."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rosbags.rosbag2 import Reader
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage

    with Reader(DRIVE) as reader:
        times = [t for _, t, _ in reader.messages()]
        kept = sum(1 for c, _, _ in reader.messages() if c.topic == KEPT)
    node = Node("play_probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    got: dict[str, list] = {"clock": [], KEPT: [], EXCLUDED: []}
    node.create_subscription(Clock, "/clock", lambda m: got["clock"].append(m.clock.sec * 10**9 + m.clock.nanosec),
                             100)
    for topic in (KEPT, EXCLUDED):
        node.create_subscription(CompressedImage, topic, lambda m, t=topic: got[t].append(m), 100)
    play = subprocess.Popen([str(CLI), "play", str(DRIVE), "--rate", "1", "--clock", "--exclude", EXCLUDED,
                             "--wait-for", "/clock", KEPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while play.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for _ in range(20):                          # what is still in flight
            executor.spin_once(timeout_sec=0.05)
    finally:
        if play.poll() is None:
            play.kill()
        _, err = play.communicate(timeout=10)
        executor.shutdown()
        node.destroy_node()
    assert play.returncode == 0, err[-3000:]
    assert len(got[KEPT]) == kept > 0 and got[EXCLUDED] == []
    clock = got["clock"]
    assert clock and set(clock) <= set(times) and clock == sorted(clock) and clock[-1] == max(times)
