"""Static transforms from /tf_static (stands in for tf2_ros's buffer for static frames).

Transforms are stored as parent <- child edges; :meth:`StaticTransforms.lookup` chains
them through the tree. Each transform of a message is validated on its own (tf2's rule):
a bad one is rejected by name and the rest are kept, and a lookup only touches the edges
on its path. No rclpy needed (works on rclpy or rosbags TFMessages).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from aqr_perception.stamps import header_ns

#: a quaternion whose norm is this close to 1 is normalised; a farther one is refused
#: (tf2 refuses denormalised quaternions too; drivers publish norms a few 1e-4 off)
QUATERNION_NORM_TOLERANCE = 1e-2
#: a translation farther than this is no frame on Earth (UTM and ECEF stay below 1e7 m); in
#: float32 (the model's lidar2img) a finite 1e38 m would already be inf
MAX_TRANSLATION_M = 1e9


@dataclass
class RejectedTransform:
    """One transform of a TFMessage that was not stored, and why (the rest were)."""

    parent: str
    child: str
    reason: str

    def __str__(self) -> str:
        return f"{self.parent} -> {self.child}: {self.reason}"


def transform_to_matrix(tf) -> np.ndarray:
    """geometry_msgs/Transform -> (4, 4) child -> parent; ValueError for a transform that
    is not a rigid motion (non-finite values, a quaternion far from unit norm) or lies
    farther than MAX_TRANSLATION_M."""
    q = np.array([tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w], dtype=np.float64)
    t = np.array([tf.translation.x, tf.translation.y, tf.translation.z], dtype=np.float64)
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))):
        raise ValueError("non-finite transform")
    if np.abs(t).max() > MAX_TRANSLATION_M:
        raise ValueError(f"translation {t.tolist()} m is beyond {MAX_TRANSLATION_M:g} m")
    scale = np.abs(q).max()
    norm = scale * np.sqrt(np.sum((q / scale) ** 2)) if scale > 0 else 0.0   # no overflow for huge entries
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise ValueError(f"quaternion norm {norm:.6g} is not 1 (tolerance {QUATERNION_NORM_TOLERANCE})")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q / norm).as_matrix()
    T[:3, 3] = t
    return T


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid motion (no general matrix inversion)."""
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


def message_transforms(msg) -> tuple[list[tuple[str, str, int, np.ndarray]], list[RejectedTransform]]:
    """Every transform of a TFMessage, each validated on its own as tf2 does: the good ones
    as (parent, child, stamp_ns, child -> parent (4, 4)), frame names without a leading '/'
    (tf2's convention), and the rejected ones with their reason."""
    good, rejected = [], []
    for t in msg.transforms:
        parent, child = t.header.frame_id.lstrip("/"), t.child_frame_id.lstrip("/")
        if not parent or not child or parent == child:
            rejected.append(RejectedTransform(parent, child, "empty or identical frame names"))
            continue
        try:
            good.append((parent, child, header_ns(t), transform_to_matrix(t.transform)))
        except ValueError as exc:
            rejected.append(RejectedTransform(parent, child, str(exc)))
    return good, rejected


class StaticTransforms:
    """A tree of static frames: one parent per frame, as in tf2, so a transform that gives a
    frame a new parent (a corrected calibration re-rooting a camera) replaces the old edge
    rather than leaving two paths to choose from."""

    def __init__(self) -> None:
        self._edges: dict[tuple[str, str], np.ndarray] = {}   # (parent, child) -> child->parent
        self._parent: dict[str, str] = {}                      # child -> parent

    def add_message(self, msg) -> list[RejectedTransform]:
        """Add every valid transform of a TFMessage; returns the rejected ones."""
        good, rejected = message_transforms(msg)
        for parent, child, _stamp, T in good:
            self.add(parent, child, T)
        return rejected

    def add(self, parent: str, child: str, child_to_parent: np.ndarray) -> None:
        previous = self._parent.get(child)
        if previous is not None and previous != parent:
            del self._edges[(previous, child)]
        self._parent[child] = parent
        self._edges[(parent, child)] = child_to_parent

    @property
    def frames(self) -> set[str]:
        return {f for edge in self._edges for f in edge}

    def path(self, target: str, source: str, extra: Iterable[tuple[str, str]] = ()
             ) -> list[tuple[tuple[str, str], bool]] | None:
        """The edges from ``source`` to ``target`` (a breadth-first search over frame names:
        no transform is touched), each as ((parent, child), walked parent -> child); None if
        not connected. ``extra``: more (parent, child) edges, e.g. the dynamic /tf ones."""
        target, source = target.lstrip("/"), source.lstrip("/")
        adj: dict[str, list[tuple[str, tuple[str, str], bool]]] = {}
        for parent, child in (*self._edges, *extra):
            adj.setdefault(child, []).append((parent, (parent, child), False))    # child -> parent
            adj.setdefault(parent, []).append((child, (parent, child), True))     # parent -> child
        came: dict[str, tuple[str, tuple[tuple[str, str], bool]] | None] = {source: None}
        queue = deque([source])
        while queue and target not in came:
            frame = queue.popleft()
            for nxt, edge, down in adj.get(frame, []):
                if nxt not in came:
                    came[nxt] = (frame, (edge, down))
                    queue.append(nxt)
        if target not in came:
            return None
        steps, frame = [], target
        while came[frame] is not None:
            frame, step = came[frame]
            steps.append(step)
        return steps[::-1]

    def lookup(self, target: str, source: str,
               extra_edges: dict[tuple[str, str], np.ndarray] | None = None) -> np.ndarray | None:
        """(4, 4) mapping points in ``source`` into ``target``, or None if not connected.

        ``extra_edges``: more (parent, child) -> child->parent transforms for this lookup
        only (the dynamic /tf edges at one instant, see ``frames.ego_pose``). Only the edges
        on the path are used (and inverted where walked parent -> child)."""
        extra_edges = extra_edges or {}
        steps = self.path(target, source, extra_edges)
        return None if steps is None else self.compose(steps, extra_edges)

    def compose(self, steps: list[tuple[tuple[str, str], bool]],
                extra_edges: dict[tuple[str, str], np.ndarray] | None = None) -> np.ndarray:
        """(4, 4) of a :meth:`path`: its edges chained, inverted where walked parent -> child."""
        extra_edges = extra_edges or {}
        T = np.eye(4)
        for edge, down in steps:
            E = extra_edges[edge] if edge in extra_edges else self._edges[edge]
            T = (rigid_inverse(E) if down else E) @ T
        return T
