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


def test_a_topic_of_a_type_not_installed_is_skipped_with_a_warning(ros_context, tmp_path):
    """A vehicle's bag holds topics of its vendors' message packages, installed nowhere here:
    play skips them with one warning each, as ros2 bag play does, and plays the rest (before:
    a ModuleNotFoundError traceback before the first message, in eval's replay too)."""
    from bag_helpers import VENDOR_TYPE, with_vendor_topic
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import PointCloud2

    bag = with_vendor_topic(DRIVE, tmp_path / "vehicle", clouds=2)
    with Reader(bag) as reader:
        clouds = [bytes(raw) for c, _, raw in reader.messages() if c.topic == "/LIDAR_TOP"]
    node = Node("play_probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    got: list = []
    node.create_subscription(PointCloud2, "/LIDAR_TOP", got.append, 100, raw=True)
    try:
        returncode, err = play_while_spinning(executor, bag, "--rate", "0", "--wait-for", "/LIDAR_TOP")
    finally:
        executor.shutdown()
        node.destroy_node()
    assert returncode == 0, err[-3000:]
    assert err.strip().splitlines() == [f"play: not playing /vehicle/status (2 messages): its type {VENDOR_TYPE} "
                                        "is not installed here"]
    assert got == clouds and len(clouds) == 2
