"""Subscriptions that count what never reached their callback.

A subscription with KEEP_LAST history silently overwrites the oldest waiting sample when
the executor falls behind, and Fast DDS raises no ``message_lost`` event for that. Every
sample carries its writer's ``publication_sequence_number`` (rmw MessageInfo), so a jump
in it is exactly the number of samples this reader never handed to us
(:class:`SequenceGaps`). :func:`counted_subscription` adds that count, DDS's own
``message_lost`` events and QoS mismatches to a subscription.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import InvalidHandle
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.subscription import Subscription


class SequenceGaps:
    """Per-publisher gap counter for one subscription."""

    def __init__(self) -> None:
        self._last: dict[bytes, int] = {}
        self.missed = 0

    def observe(self, info: Mapping[str, Any]) -> int:
        """Record one received sample; returns how many of its publisher's samples were skipped.

        The first sample of a publisher only sets the baseline (what it published before
        we matched was never meant for us); middleware without sequence numbers gives 0.
        """
        seq, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
        if not seq or not gid:
            return 0
        key = bytes(gid["data"]) if isinstance(gid, Mapping) else bytes(gid)
        last = self._last.get(key)
        self._last[key] = max(seq, last or 0)
        if last is None or seq <= last:
            return 0
        gap = seq - last - 1
        self.missed += gap
        return gap


def take_pending(sub: Subscription, limit: int = 1000) -> int:
    """Hand the samples waiting in ``sub``'s reader to its callback, as the executor's take
    would (rclpy ``Executor._take_subscription``); returns how many were taken.

    For a subscription made by :func:`counted_subscription` (its callback takes the message
    and its info), while the executor cannot run: a lifecycle transition's callback holds it.
    ``limit`` bounds the loop against a publisher faster than the callbacks."""
    taken = 0
    while taken < limit:
        try:
            with sub.handle:
                sample = sub.handle.take_message(sub.msg_type, sub.raw)
        except InvalidHandle:                # destroyed meanwhile: nothing left to take
            break
        if sample is None:
            break
        sub.callback(*sample)
        taken += 1
    return taken


def counted_subscription(node: Node, msg_type: type, topic: str, callback: Callable[[Any], None], qos: QoSProfile,
                         counters: MutableMapping[str, int], warn: Callable[[str, str], None],
                         parse: Callable[[bytes], Any] | None = None) -> Subscription:
    """``node.create_subscription`` whose losses and QoS mismatches are counted:

    * ``messages_missed.<topic>``: samples that never reached ``callback`` (sequence gaps:
      overwritten in a queue or lost in transport);
    * ``dds_messages_lost.<topic>``: what DDS reports lost in transport (part of the above
      once the next sample is taken, see the README's "When the counters settle");
    * ``qos_incompatible.<topic>``: publishers whose QoS cannot match ours.

    Each also gets a throttled line through ``warn(key, text)``.

    With ``parse`` the subscription is raw (rclpy hands over the serialised bytes, no
    typed copy) and ``parse(bytes)`` makes the message (:mod:`aqr_perception.frames.cdr`'s
    readers); bytes it refuses (``ValueError``) are counted as
    ``messages_malformed.<topic>`` with the reason, and the callback does not run."""
    def lost(info) -> None:
        counters[f"dds_messages_lost.{topic}"] += info.total_count_change
        warn(f"lost:{topic}", f"{topic}: DDS reports {info.total_count} messages lost in transport so far "
                              "(these are also in messages_missed)")

    def incompatible(info) -> None:
        counters[f"qos_incompatible.{topic}"] += info.total_count_change
        warn(f"qos:{topic}", f"{topic}: a publisher's QoS is incompatible (policy id {info.last_policy_kind}); "
                             "its messages are not received")

    gaps = SequenceGaps()

    def receive(msg, info) -> None:
        if missed := gaps.observe(info):
            counters[f"messages_missed.{topic}"] += missed
            warn(f"missed:{topic}", f"{topic}: {gaps.missed} messages never reached the node so far (gaps in the "
                                    "publisher's sequence numbers: overwritten in a queue, qos_depth / CPU load, "
                                    "or lost in transport)")
        if parse is not None:
            try:
                msg = parse(msg)
            except ValueError as exc:
                counters[f"messages_malformed.{topic}"] += 1
                warn(f"malformed:{topic}", f"{topic}: a message that does not parse was dropped ({exc})")
                return
        callback(msg)

    events = SubscriptionEventCallbacks(message_lost=lost, incompatible_qos=incompatible)
    return node.create_subscription(msg_type, topic, receive, qos, event_callbacks=events, raw=parse is not None)
