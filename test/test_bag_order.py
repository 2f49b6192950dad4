"""Bag order as the live node sees it: a /tf pose recorded just after its cloud reaches it first."""
from types import SimpleNamespace

from aqr_perception.data.bag_order import pose_first

WAIT = 50


def _msgs(*spec):
    """("tf"|"cloud"|"img", receive time, header stamp) -> fake bag messages (raw = the stamp)."""
    topics = {"tf": "/tf", "cloud": "/lidar", "img": "/cam"}
    return [(SimpleNamespace(topic=topics[k], msgtype=k), t, s) for k, t, s in spec]


def _order(msgs):
    return [(c.msgtype, t) for c, t, _ in pose_first(msgs, "/lidar", WAIT, lambda msgtype, raw: raw)]


def test_pose_recorded_first_keeps_bag_order():
    msgs = _msgs(("img", 0, 0), ("tf", 0, 0), ("cloud", 0, 0), ("img", 10, 10), ("tf", 50, 50), ("cloud", 50, 50))
    assert _order(msgs) == [(c.msgtype, t) for c, t, _ in msgs]


def test_late_pose_overtakes_only_within_the_wait_and_images_keep_their_place():
    msgs = _msgs(("img", 0, 0), ("cloud", 0, 0), ("img", 5, 5), ("tf", 6, 0),       # pose 6 ns late: moved
                 ("cloud", 100, 100), ("img", 120, 120), ("tf", 151, 100),          # 51 ns late: not waited for
                 ("cloud", 200, 200), ("tf", 201, 200))                             # the last message: moved
    assert _order(msgs) == [("img", 0), ("tf", 6), ("cloud", 0), ("img", 5),
                            ("cloud", 100), ("img", 120), ("tf", 151),
                            ("tf", 201), ("cloud", 200)]


def test_a_pose_older_than_the_cloud_is_not_enough_and_held_clouds_are_each_handled():
    # the /tf at 3 still lacks the cloud's instant (10); the one at 12 covers it. The second
    # cloud, held behind the first, waits for its own pose in turn.
    msgs = _msgs(("cloud", 10, 10), ("tf", 11, 3), ("cloud", 20, 20), ("tf", 21, 12), ("tf", 30, 20))
    assert _order(msgs) == [("tf", 11), ("tf", 21), ("cloud", 10), ("tf", 30), ("cloud", 20)]


def test_a_cloud_without_any_pose_is_released_at_the_end_of_the_bag():
    msgs = _msgs(("cloud", 0, 0), ("img", 1, 1))
    assert _order(msgs) == [("cloud", 0), ("img", 1)]
