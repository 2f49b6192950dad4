"""Answers in the official nuScenes detection submission format, scored by the devkit's
own ``DetectionEval`` against the dataset (its range, point and bike-rack filters).

The format: ``{"meta": {use_camera, use_lidar, use_radar, use_map, use_external},
"results": {sample_token: [{sample_token, translation, size (w, l, h), rotation
(w, x, y, z), velocity (vx, vy), detection_name, detection_score, attribute_name}]}}``,
global frame, at most 500 boxes per sample. Sample tokens come from the drive's
ground truth (``aqr-perception nuscenes2bag`` writes them).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aqr_perception.data.boxes import transform_boxes, yaw_quaternion_wxyz
from aqr_perception.data.ground_truth import GtFrame
from aqr_perception.evaluation.answers import FrameAnswer
from aqr_perception.evaluation.metrics import default_attribute

#: what the detector uses, as the submission's meta block states it
META = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


def submission(answers: dict[str, FrameAnswer], gt: dict[int, GtFrame], max_boxes: int = 500) -> dict:
    """The submission of the answers of key frames with a sample token (the rest are left out)."""
    results: dict[str, list[dict]] = {}
    for stamp, frame in gt.items():
        if frame.sample_token is None:
            raise ValueError(f"frame {stamp} has no nuScenes sample token: not a converted nuScenes drive")
        a = answers.get(str(stamp))
        entries = []
        if a is not None and len(a.boxes):
            boxes = transform_boxes(a.boxes, frame.lidar_to_global)
            order = np.argsort(-a.scores, kind="stable")[:max_boxes]
            for i in order:
                b, name = boxes[i], a.names[i]
                entries.append({"sample_token": frame.sample_token, "translation": [float(v) for v in b[:3]],
                                "size": [float(b[4]), float(b[3]), float(b[5])],
                                "rotation": yaw_quaternion_wxyz(float(b[6])), "velocity": [float(b[7]), float(b[8])],
                                "detection_name": name, "detection_score": float(a.scores[i]),
                                "attribute_name": default_attribute(name, float(np.hypot(b[7], b[8])))})
        results[frame.sample_token] = entries
    return {"meta": dict(META), "results": results}


def write_submission(path: Path, sub: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sub))
    return path


def devkit_detection_eval(dataroot: Path, version: str, eval_set: str, result_path: Path, out_dir: Path,
                          render_curves: bool = True) -> dict:
    """``nuscenes.eval.detection.evaluate.DetectionEval`` with the ``detection_cvpr_2019``
    config; returns its metrics summary (mean_ap, nd_score, tp_errors, ...); its plots
    (PR and TP curves) go to ``out_dir/plots`` with ``render_curves``."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    evaluator = DetectionEval(nusc, config=config_factory("detection_cvpr_2019"), result_path=str(result_path),
                              eval_set=eval_set, output_dir=str(out_dir), verbose=False)
    return evaluator.main(plot_examples=0, render_curves=render_curves)
