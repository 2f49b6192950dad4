"""Static transforms from /tf_static (stands in for tf2_ros's buffer for static frames).

Transforms are stored as parent <- child edges; :meth:`StaticTransforms.lookup` chains
them through the tree. No rclpy needed (works on rclpy or rosbags TFMessages).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
from scipy.spatial.transform import Rotation

from aqr_perception.stamps import header_ns


def transform_to_matrix(tf) -> np.ndarray:
    """geometry_msgs/Transform -> (4, 4) child -> parent."""
    q = tf.rotation
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    T[:3, 3] = (tf.translation.x, tf.translation.y, tf.translation.z)
    return T


def message_transforms(msg) -> Iterator[tuple[str, str, int, np.ndarray]]:
    """(parent, child, stamp_ns, child -> parent (4, 4)) of every transform of a TFMessage,
    frame names without a leading '/' (tf2's convention)."""
    for t in msg.transforms:
        stamp = header_ns(t)
        yield t.header.frame_id.lstrip("/"), t.child_frame_id.lstrip("/"), stamp, transform_to_matrix(t.transform)


class StaticTransforms:
    """A tree of static frames."""

    def __init__(self) -> None:
        self._edges: dict[tuple[str, str], np.ndarray] = {}   # (parent, child) -> child->parent

    def add_message(self, msg) -> int:
        """Add every transform of a TFMessage; returns how many were added/updated."""
        for parent, child, _stamp, T in message_transforms(msg):
            self.add(parent, child, T)
        return len(msg.transforms)

    def add(self, parent: str, child: str, child_to_parent: np.ndarray) -> None:
        if not np.all(np.isfinite(child_to_parent)):
            raise ValueError(f"non-finite transform {parent} <- {child}")
        self._edges[(parent, child)] = child_to_parent

    @property
    def frames(self) -> set[str]:
        return {f for edge in self._edges for f in edge}

    def lookup(self, target: str, source: str,
               extra_edges: dict[tuple[str, str], np.ndarray] | None = None) -> np.ndarray | None:
        """(4, 4) mapping points in ``source`` into ``target``, or None if not connected.

        ``extra_edges``: more (parent, child) -> child->parent transforms for this lookup
        only (the dynamic /tf edges at one instant, see ``ros.ego_pose``)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        adj: dict[str, list[tuple[str, np.ndarray]]] = {}
        for (parent, child), T in {**self._edges, **(extra_edges or {})}.items():
            adj.setdefault(child, []).append((parent, T))                # child -> parent
            adj.setdefault(parent, []).append((child, np.linalg.inv(T)))  # parent -> child
        seen = {source: np.eye(4)}
        queue = deque([source])
        while queue:
            frame = queue.popleft()
            for nxt, T in adj.get(frame, []):
                if nxt not in seen:
                    seen[nxt] = T @ seen[frame]
                    if nxt == target:
                        return seen[nxt]
                    queue.append(nxt)
        return None
