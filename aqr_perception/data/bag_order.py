"""Bag message order as the live node experiences it when the ego pose comes just after a cloud.

A bag stores messages in receive order. When /tf is produced from the LiDAR itself (LiDAR
odometry), the pose for a cloud's stamp is recorded *after* that cloud. The live node
copes: it holds a cloud up to ``sync.camera_wait_s`` (wall clock) for its /tf pose
(``FramePipeline.wait_for_inputs``). Offline readers and the stepwise replay deliver one
message at a time and would find no pose, so every frame would fall back to a single
sweep. :func:`pose_first` reorders the stream the way that wait does: a cloud whose pose is
not known yet is held until a /tf message covering its stamp arrives (that /tf overtakes
the held messages) or until bag time passes the cloud's receive time + ``wait_ns``. Every
other message keeps its place after the cloud, so image association is unchanged: a
cloud still sees exactly the images that preceded it. Bags whose /tf already precedes
each cloud come out in bag order.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aqr_perception.stamps import NS, header_ns

#: one bag message as ``rosbags.rosbag2.Reader.messages()`` yields it: (connection, receive ns, raw CDR)
Message = tuple[Any, int, bytes]


def header_stamps(store) -> Callable[[str, bytes], int]:
    """``stamp(msgtype, raw)``: a PointCloud2's header stamp, or a TFMessage's newest transform stamp (ns)."""

    def stamp(msgtype: str, raw: bytes) -> int:
        msg = store.deserialize_cdr(raw, msgtype)
        stamped = msg.transforms if hasattr(msg, "transforms") else [msg]
        return max((header_ns(m) for m in stamped), default=-1)

    return stamp


def pose_first(messages: Iterable[Message], lidar_topic: str, wait_ns: int,
               stamp: Callable[[str, bytes], int], tf_topic: str = "/tf") -> Iterator[Message]:
    """``messages`` in bag order, except that /tf messages arriving within ``wait_ns`` (bag
    receive time) after a cloud whose stamp no /tf has reached yet are moved before it.

    ``stamp(msgtype, raw)`` gives a cloud's header stamp and a /tf message's newest stamp
    (see :func:`header_stamps`).
    """
    source = iter(messages)
    redo: deque[Message] = deque()          # messages held behind a cloud, to be handled again
    newest_tf = -1
    while True:
        item = redo.popleft() if redo else next(source, None)
        if item is None:
            return
        conn, t, raw = item
        if conn.topic == tf_topic:
            newest_tf = max(newest_tf, stamp(conn.msgtype, raw))
            yield item
            continue
        if conn.topic != lidar_topic:
            yield item
            continue
        cloud_stamp = stamp(conn.msgtype, raw)
        held: list[Message] = []
        while newest_tf < cloud_stamp:
            nxt = redo.popleft() if redo else next(source, None)
            if nxt is None:
                break
            if nxt[1] > t + wait_ns:
                redo.appendleft(nxt)
                break
            if nxt[0].topic == tf_topic:
                newest_tf = max(newest_tf, stamp(nxt[0].msgtype, nxt[2]))
                yield nxt                   # the pose the node waited for reaches it first
            else:
                held.append(nxt)
        yield item
        redo.extendleft(reversed(held))


def node_pose_wait(lidar_topic: str, camera_wait_s: float, store) -> Callable[[Iterable[Message]], Iterator[Message]]:
    """:func:`pose_first` with the node's own bound (``sync.camera_wait_s``): the order that
    offline reading (``feed_bag``) and the stepwise replay both use for multi-sweep models."""
    stamp, wait_ns = header_stamps(store), int(camera_wait_s * NS)
    return lambda messages: pose_first(messages, lidar_topic, wait_ns, stamp)
