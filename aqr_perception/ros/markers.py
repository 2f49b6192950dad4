"""RViz markers for detections and ground truth.

Predictions: box edges coloured by class, a heading arrow, class + score text (the
node's ``~/markers``). Ground truth (the player's ``/gt/markers``): thinner white edges
and a "GT <class>" label below the box, so both can be shown together and told apart.
The colours are the evaluation pictures' (data/pictures.py). Every MarkerArray starts
with a DELETEALL marker, so boxes of objects that went away disappear with the next frame.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from aqr_perception.data.boxes import BOX_EDGES, box_corners
from aqr_perception.data.pictures import GT_COLOR, class_color

MARKER_LIFETIME_S = 1.0
PRED_LINE_M, GT_LINE_M = 0.08, 0.04
LABEL_HEIGHT_M = 0.6


def _rgba(rgb: tuple[int, int, int], alpha: float = 1.0) -> ColorRGBA:
    return ColorRGBA(r=rgb[0] / 255.0, g=rgb[1] / 255.0, b=rgb[2] / 255.0, a=alpha)


def _marker(header: Header, ns: str, i: int, kind: int, color: ColorRGBA) -> Marker:
    life = Duration(sec=int(MARKER_LIFETIME_S), nanosec=int(MARKER_LIFETIME_S % 1 * 1e9))
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
