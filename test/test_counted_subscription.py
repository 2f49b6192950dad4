"""Queue overwrites are counted from DDS sequence numbers: a real KEEP_LAST(2) subscription
that falls behind a burst hands over only the newest samples, and the gaps in the writers'
publication_sequence_number say exactly how many it never delivered."""
import time

from aqr_perception.ros.counted_subscription import SequenceGaps


def _info(seq, gid=b"A"):
    return {"publication_sequence_number": seq, "publisher_gid": {"data": gid}}


def test_gaps_per_publisher_first_sample_is_the_baseline():
    g = SequenceGaps()
    assert g.observe(_info(5)) == 0                    # joined late: earlier samples were not ours
    assert g.observe(_info(6)) == 0 and g.observe(_info(9)) == 2
    assert g.observe(_info(1, b"B")) == 0 and g.observe(_info(4, b"B")) == 2
    assert g.observe(_info(8)) == 0                    # late duplicate / reordering: no gap, no rewind
    assert g.observe(_info(10)) == 0
    assert g.observe({"publication_sequence_number": 0, "publisher_gid": None}) == 0   # no sequence numbers
    assert g.missed == 4


def test_a_real_subscription_queue_overwrite_is_accounted(ros_context):
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    node = rclpy.create_node("gaps", context=ros_context)
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(node)
    got, gaps = [], SequenceGaps()

    def cb(msg, info):
        gaps.observe(info)
        got.append(int(msg.data))

    node.create_subscription(String, "/gaps_test", cb, QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))
    pub = node.create_publisher(String, "/gaps_test", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    end = time.monotonic() + 10
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    pub.publish(String(data="0"))                       # the baseline sample
    end = time.monotonic() + 5
    while not got and time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    for i in range(1, 21):                              # a burst while nobody spins
        pub.publish(String(data=str(i)))
    time.sleep(0.3)
    end = time.monotonic() + 2
    while time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    ex.shutdown()
    node.destroy_node()
    assert got[0] == 0 and got[-1] == 20 and len(got) < 21        # the queue kept only the newest
    assert len(got) + gaps.missed == 21                           # ... and every other one is counted
