"""``aqr-perception play`` (the ros2 bag play stand-in) as the README writes it, received
over loopback DDS and compared with the bag as rosbags reads it."""

from cli_helpers import play_while_spinning

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
    try:
        returncode, err = play_while_spinning(executor, DRIVE, "--rate", "1", "--clock", "--exclude", EXCLUDED,
                                              "--wait-for", "/clock", KEPT)
    finally:
        executor.shutdown()
        node.destroy_node()
    assert returncode == 0, err[-3000:]
    assert len(got[KEPT]) == kept > 0 and got[EXCLUDED] == []
    clock = got["clock"]
    assert clock and set(clock) <= set(times) and clock == sorted(clock) and clock[-1] == max(times)
