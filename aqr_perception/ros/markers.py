"""RViz markers for detections: box edges coloured by class, heading arrow, class+score text.

Every MarkerArray starts with a DELETEALL marker, so boxes of objects that went away
disappear with the next frame.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from aqr_perception.data.boxes import BOX_EDGES, box_corners
from aqr_perception.data.pictures import class_color

MARKER_LIFETIME_S = 1.0


def detection_markers(header: Header, boxes: np.ndarray, scores: np.ndarray, names: list[str]) -> MarkerArray:
    """(N, 9) boxes in ``header.frame_id`` -> MarkerArray (DELETEALL + 3 markers per box)."""
    out = MarkerArray()
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    corners = box_corners(boxes[:, :7]) if len(boxes) else np.zeros((0, 8, 3))
    life = Duration(sec=int(MARKER_LIFETIME_S), nanosec=int(MARKER_LIFETIME_S % 1 * 1e9))
    for i, (c, b, s, name) in enumerate(zip(corners, boxes, scores, names)):
        r, g, bl = (v / 255.0 for v in class_color(name))
        color = ColorRGBA(r=r, g=g, b=bl, a=1.0)
        edges = Marker(header=header, ns="boxes", id=i, type=Marker.LINE_LIST, action=Marker.ADD, lifetime=life)
        edges.scale.x = 0.08
        edges.color = color
        edges.pose.orientation.w = 1.0
        edges.points = [Point(x=float(c[k, 0]), y=float(c[k, 1]), z=float(c[k, 2])) for e in BOX_EDGES for k in e]
        arrow = Marker(header=header, ns="heading", id=i, type=Marker.ARROW, action=Marker.ADD, lifetime=life)
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.12, 0.25, 0.25
        arrow.color = color
        arrow.pose.orientation.w = 1.0
        tip = b[:3] + np.array([np.cos(b[6]), np.sin(b[6]), 0.0]) * max(b[3] / 2 + 0.5, 1.0)
        arrow.points = [Point(x=float(b[0]), y=float(b[1]), z=float(b[2])),
                        Point(x=float(tip[0]), y=float(tip[1]), z=float(tip[2]))]
        text = Marker(header=header, ns="labels", id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      lifetime=life, text=f"{name} {s:.2f}")
        text.scale.z = 0.6
        text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        text.pose.position.x, text.pose.position.y = float(b[0]), float(b[1])
        text.pose.position.z = float(b[2] + b[5] / 2 + 0.5)
        text.pose.orientation.w = 1.0
        out.markers += [edges, arrow, text]
    return out
