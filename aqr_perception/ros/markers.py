"""RViz markers for detections and ground truth.

Predictions: box edges coloured by class, a heading arrow, class + score text (the
node's ``~/markers``). Ground truth (the player's ``/gt/markers``): thinner white edges
and a "GT <class>" label below the box, so both can be shown together and told apart.
The colours are the evaluation pictures' (data/pictures.py). Every MarkerArray starts
with a DELETEALL marker, so boxes of objects that went away disappear with the next frame.

The node publishes :func:`detection_markers_cdr`: the same MarkerArray serialised directly
(frames/cdr.CdrWriter), 301 Marker objects per 100 detections being ~20 ms of Python per
frame while RViz watches; the object builders stay as the reference the tests compare
with, and as what the node publishes on a distro whose Marker has another layout.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from aqr_perception.data.boxes import BOX_EDGES, box_corners
from aqr_perception.data.pictures import GT_COLOR, class_color
from aqr_perception.frames.cdr import CdrWriter

MARKER_LIFETIME_S = 1.0
_LIFETIME = (int(MARKER_LIFETIME_S), int(MARKER_LIFETIME_S % 1 * 1e9))     # (sec, nanosec)
PRED_LINE_M, GT_LINE_M = 0.08, 0.04
LABEL_HEIGHT_M = 0.6


def _rgba_values(rgb: tuple[int, int, int], alpha: float = 1.0) -> tuple[float, float, float, float]:
    return rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0, alpha


def _rgba(rgb: tuple[int, int, int], alpha: float = 1.0) -> ColorRGBA:
    r, g, b, a = _rgba_values(rgb, alpha)
    return ColorRGBA(r=r, g=g, b=b, a=a)


def _marker(header: Header, ns: str, i: int, kind: int, color: ColorRGBA) -> Marker:
    life = Duration(sec=_LIFETIME[0], nanosec=_LIFETIME[1])
    m = Marker(header=header, ns=ns, id=i, type=kind, action=Marker.ADD, lifetime=life, color=color)
    m.pose.orientation.w = 1.0
    return m


def _edges(header: Header, ns: str, i: int, corners: np.ndarray, color: ColorRGBA, width: float) -> Marker:
    m = _marker(header, ns, i, Marker.LINE_LIST, color)
    m.scale.x = width
    m.points = [Point(x=float(corners[k, 0]), y=float(corners[k, 1]), z=float(corners[k, 2]))
                for e in BOX_EDGES for k in e]
    return m


def _label(header: Header, ns: str, i: int, text: str, xyz: np.ndarray, color: ColorRGBA) -> Marker:
    m = _marker(header, ns, i, Marker.TEXT_VIEW_FACING, color)
    m.text = text
    m.scale.z = LABEL_HEIGHT_M
    m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in xyz)
    return m


def detection_markers(header: Header, boxes: np.ndarray, scores: np.ndarray, names: list[str]) -> MarkerArray:
    """(N, >= 7) boxes in ``header.frame_id`` -> MarkerArray (DELETEALL + 3 markers per box)."""
    out = MarkerArray()
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    corners = box_corners(boxes[:, :7]) if len(boxes) else np.zeros((0, 8, 3))
    white = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    for i, (c, b, s, name) in enumerate(zip(corners, boxes, scores, names)):
        color = _rgba(class_color(name))
        arrow = _marker(header, "heading", i, Marker.ARROW, color)
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.12, 0.25, 0.25
        tip = b[:3] + np.array([np.cos(b[6]), np.sin(b[6]), 0.0]) * max(b[3] / 2 + 0.5, 1.0)
        arrow.points = [Point(x=float(b[0]), y=float(b[1]), z=float(b[2])),
                        Point(x=float(tip[0]), y=float(tip[1]), z=float(tip[2]))]
        out.markers += [_edges(header, "boxes", i, c, color, PRED_LINE_M), arrow,
                        _label(header, "labels", i, f"{name} {s:.2f}", b[:3] + [0, 0, b[5] / 2 + 0.5], white)]
    return out


def ground_truth_markers(header: Header, boxes: np.ndarray, names: list[str]) -> MarkerArray:
    """(N, >= 7) ground-truth boxes in ``header.frame_id`` -> MarkerArray (DELETEALL + edges
    and a label per box, namespaces ``gt_boxes`` / ``gt_labels``)."""
    out = MarkerArray()
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    corners = box_corners(boxes[:, :7]) if len(boxes) else np.zeros((0, 8, 3))
    white = _rgba(GT_COLOR, 0.9)
    for i, (c, b, name) in enumerate(zip(corners, boxes, names)):
        out.markers += [_edges(header, "gt_boxes", i, c, white, GT_LINE_M),
                        _label(header, "gt_labels", i, f"GT {name}", b[:3] - [0, 0, b[5] / 2 + 0.5], white)]
    return out


# ------------------------------------------------------------------ serialised directly
#: the Marker fields :func:`detection_markers_cdr` writes, in order (Iron and later; Humble's
#: Marker has no texture, uv_coordinates or mesh_file, and would get malformed bytes)
MARKER_CDR_FIELDS = ("header", "ns", "id", "type", "action", "pose", "scale", "color", "lifetime", "frame_locked",
                     "points", "colors", "texture_resource", "texture", "uv_coordinates", "text", "mesh_resource",
                     "mesh_file", "mesh_use_embedded_materials")


def marker_cdr_matches(marker_type: type = Marker) -> bool:
    """Whether this distro's visualization_msgs/Marker has the layout the CDR writer writes
    (else the node publishes :func:`detection_markers` objects)."""
    return tuple(marker_type.get_fields_and_field_types()) == MARKER_CDR_FIELDS


_EDGE_INDEX = np.array([k for e in BOX_EDGES for k in e])
_IDENTITY_POSE = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])


def _marker_cdr(w: CdrWriter, stamp: tuple[int, int, str], ns: str, i: int, kind: int, action: int,
                pose: np.ndarray, scale: tuple[float, float, float], rgba: tuple[float, ...],
                lifetime: tuple[int, int], points: np.ndarray | None = None, text: str = "") -> None:
    """One visualization_msgs/Marker (Jazzy / Kilted layout, textures and meshes empty):
    pose (7,) position + quaternion xyzw, points (P, 3) float64."""
    w.header(*stamp)
    w.string(ns)
    w.i32(i, kind, action)
    w.f64_block(pose)
    w.f64(*scale)
    w.f32(*rgba)
    w.i32(lifetime[0])
    w.u32(lifetime[1])
    w.boolean(False)                                             # frame_locked
    if points is None or len(points) == 0:
        w.u32(0)
    else:
        w.u32(len(points))
        w.f64_block(points)
    w.u32(0)                                                     # colors
    w.string("")                                                 # texture_resource
    w.header(0, 0, "")                                           # texture: CompressedImage
    w.string("")
    w.u32(0)
    w.u32(0)                                                     # uv_coordinates
    w.string(text)
    w.string("")                                                 # mesh_resource
    w.string("")                                                 # mesh_file: filename, data
    w.u32(0)
    w.boolean(False)                                             # mesh_use_embedded_materials


def detection_markers_cdr(header: Header, boxes: np.ndarray, scores: np.ndarray, names: list[str]) -> bytes:
    """:func:`detection_markers`, serialised (the same values)."""
    w = CdrWriter()
    stamp = (int(header.stamp.sec), int(header.stamp.nanosec), header.frame_id)
    n = len(boxes)
    w.u32(1 + 3 * n)
    _marker_cdr(w, stamp, "", 0, Marker.ARROW, Marker.DELETEALL, _IDENTITY_POSE, (0.0, 0.0, 0.0),
                (0.0, 0.0, 0.0, 0.0), (0, 0))
    if n == 0:
        return w.tobytes()
    corners = box_corners(boxes[:, :7]).astype(np.float64)[:, _EDGE_INDEX]          # (N, 24, 3)
    reach = np.maximum(boxes[:, 3] / 2 + 0.5, 1.0)
    direction = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.zeros(n)], axis=1)
    tips = boxes[:, :3] + direction * reach[:, None]
    arrows = np.stack([boxes[:, :3].astype(np.float64), tips], axis=1)              # (N, 2, 3)
    above = np.zeros((n, 3))
    above[:, 2] = boxes[:, 5] / 2 + 0.5
    label_pose = np.zeros((n, 7))
    label_pose[:, :3], label_pose[:, 6] = boxes[:, :3] + above, 1.0
    white = (1.0, 1.0, 1.0, 1.0)
    for i in range(n):
        color = _rgba_values(class_color(names[i]))
        _marker_cdr(w, stamp, "boxes", i, Marker.LINE_LIST, Marker.ADD, _IDENTITY_POSE, (PRED_LINE_M, 0.0, 0.0),
                    color, _LIFETIME, corners[i])
        _marker_cdr(w, stamp, "heading", i, Marker.ARROW, Marker.ADD, _IDENTITY_POSE, (0.12, 0.25, 0.25), color,
                    _LIFETIME, arrows[i])
        _marker_cdr(w, stamp, "labels", i, Marker.TEXT_VIEW_FACING, Marker.ADD, label_pose[i],
                    (0.0, 0.0, LABEL_HEIGHT_M), white, _LIFETIME, text=f"{names[i]} {scores[i]:.2f}")
    return w.tobytes()
