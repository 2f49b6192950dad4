"""A drive's ground truth: the one reader of ``<drive>.gt.json`` (training, evaluation, pictures).

Written by :mod:`aqr_perception.data.synth.drive`. Per frame (``stamp_ns``): the ego pose
(``ego_pose``: translation, rotation w, x, y, z; ego -> global) and per box the nuScenes
sample-annotation fields in the global frame (``translation``, ``rotation`` w, x, y, z,
``velocity``, ``size`` in nuScenes order width, length, height, ``detection_name``,
``attribute_name``, ``num_lidar_pts``), plus the same box in the LiDAR frame (``lidar``:
``center``, ``yaw``, ``velocity``). ``meta.lidar_to_ego`` places the LiDAR on the vehicle.
Also written by ``aqr-perception nuscenes2bag`` (then with ``sample_token`` per frame, and
a null velocity where nuScenes has none: read as NaN).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aqr_perception.config import ConfigError, one_line
from aqr_perception.data.boxes import pose_wxyz, quaternion_to_yaw


@dataclass
class GtFrame:
    """Ground truth of one frame; boxes ``(N, 9)`` ``[x, y, z, dx, dy, dz, yaw, vx, vy]``
    (dx the length along the heading, dy the width: data/boxes.py)."""

    stamp_ns: int
    lidar_boxes: np.ndarray        # (N, 9) in the LiDAR frame
    global_boxes: np.ndarray       # (N, 9) in the global frame
    labels: np.ndarray             # (N,) index into the class list given to the reader
    names: list[str]
    attributes: list[str]
    num_lidar_pts: np.ndarray      # (N,) LiDAR points inside each box (0: fully occluded)
    lidar_to_global: np.ndarray    # (4, 4)
    ego_xyz: np.ndarray            # (3,) ego position, global frame
    sample_token: str | None = None  # the nuScenes sample (converted drives)


def _velocity(values) -> list[float]:
    """vx, vy; null (an unknown velocity, e.g. a nuScenes instance annotated once) -> NaN."""
    return [np.nan if v is None else float(v) for v in values]


def _lwh(size_wlh) -> list[float]:
    """nuScenes ``size`` (width, length, height) -> the box extents (dx=length, dy=width, dz=height)."""
    w, length, h = size_wlh
    return [length, w, h]


def read_ground_truth(gt_json: Path, classes: list[str]) -> dict[int, GtFrame]:
    """stamp_ns -> GtFrame of every frame of a drive's ``.gt.json``.

    Raises ConfigError, one line naming the file, for one that cannot be read, is not JSON,
    lacks a field or names a class outside ``classes``."""
    try:
        data = json.loads(Path(gt_json).read_text())
    except OSError as exc:
        raise ConfigError(f"ground truth {gt_json}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"ground truth {gt_json}: not JSON ({exc.msg} at line {exc.lineno}, column "
                          f"{exc.colno})") from None
    where = ""
    try:
        lidar_to_ego = np.asarray(data["meta"]["lidar_to_ego"], dtype=np.float64).reshape(4, 4)
        out = {}
        for k, f in enumerate(data["frames"]):
            where = f"frames[{k}]: "
            out[int(f["stamp_ns"])] = _frame(f, lidar_to_ego, classes)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        reason = f"the field {exc} is missing" if isinstance(exc, KeyError) else one_line(str(exc))
        raise ConfigError(f"ground truth {gt_json}: {where}{reason} (the .gt.json layout of data/ground_truth.py, "
                          "as `aqr-perception synth` and `nuscenes2bag` write it)") from None
    return out


def _frame(f: dict, lidar_to_ego: np.ndarray, classes: list[str]) -> GtFrame:
    """One ``frames[i]`` entry of a ``.gt.json``."""
    if unknown := sorted({b["detection_name"] for b in f["boxes"]} - set(classes)):
        raise ValueError(f"detection_name {', '.join(unknown)} is not among the model's classes "
                         f"({', '.join(classes)})")
    ego = pose_wxyz(f["ego_pose"]["translation"], f["ego_pose"]["rotation"])
    boxes = f["boxes"]
    lidar = [[*b["lidar"]["center"], *_lwh(b["size"]), b["lidar"]["yaw"], *_velocity(b["lidar"]["velocity"])]
             for b in boxes]
    rotation = np.array([[b["rotation"][1], b["rotation"][2], b["rotation"][3], b["rotation"][0]]
                         for b in boxes]).reshape(-1, 4)             # w, x, y, z -> x, y, z, w
    yaw = quaternion_to_yaw(rotation)
    glob = [[*b["translation"], *_lwh(b["size"]), yaw[i], *_velocity(b["velocity"])] for i, b in enumerate(boxes)]
    names = [b["detection_name"] for b in boxes]
    return GtFrame(
        stamp_ns=int(f["stamp_ns"]), lidar_boxes=np.array(lidar, dtype=np.float64).reshape(-1, 9),
        global_boxes=np.array(glob, dtype=np.float64).reshape(-1, 9),
        labels=np.array([classes.index(n) for n in names], dtype=np.int64), names=names,
        attributes=[b["attribute_name"] for b in boxes],
        num_lidar_pts=np.array([b["num_lidar_pts"] for b in boxes], dtype=np.int64),
        lidar_to_global=ego @ lidar_to_ego, ego_xyz=ego[:3, 3].copy(), sample_token=f.get("sample_token"))
