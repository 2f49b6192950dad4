"""``aqr-perception eval``: the detections of a drive bag against its ground truth.

Two ways to get the detections, which must agree: replay (default, evaluation/replay.py:
the real node as its own process, the bag played to it over DDS) and offline
(evaluation/answers.py: the node's FramePipeline in this process). The answers (LiDAR
frame) are moved to the global frame with the drive's ego poses and scored with the
nuScenes devkit (evaluation/metrics.py). A JSON + Markdown report (evaluation/report.py),
PR curves and per-frame pictures (evaluation/pictures.py) go to the output folder.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aqr_perception.config import AqrConfig, ModelConfig
from aqr_perception.data.boxes import transform_boxes
from aqr_perception.data.ground_truth import read_ground_truth
from aqr_perception.evaluation.answers import FrameAnswer, predict_offline
from aqr_perception.evaluation.metrics import DetectionResult, FrameBoxes, evaluate
from aqr_perception.evaluation.pictures import frame_pictures
from aqr_perception.evaluation.report import metrics_table, per_class_table, routing_summary, write_pr_curves


@dataclass
class DriveEval:
    """One drive's evaluation: GT (global frame) and answers per sample token (str(stamp_ns))."""

    gt: dict[str, FrameBoxes]
    answers: dict[str, FrameAnswer] = field(default_factory=dict)
    lidar_to_global: dict[str, np.ndarray] = field(default_factory=dict)
    frames_total: int = 0


def drive_eval(gt_json: Path, answers: dict[str, FrameAnswer], classes: list[str]) -> DriveEval:
    """GT, ego poses and the answers of the GT's frames, for one drive."""
    frames = read_ground_truth(gt_json, classes)
    gt = {str(s): FrameBoxes(f.global_boxes, f.names, f.ego_xyz, attributes=f.attributes, num_pts=f.num_lidar_pts)
          for s, f in frames.items()}
    return DriveEval(gt=gt, answers={t: a for t, a in answers.items() if t in gt},
                     lidar_to_global={str(s): f.lidar_to_global for s, f in frames.items()}, frames_total=len(gt))


def global_answers(ev: DriveEval) -> dict[str, FrameBoxes]:
    """The answers in the global frame, as the metric takes them."""
    out = {}
    for token, a in ev.answers.items():
        boxes = transform_boxes(a.boxes, ev.lidar_to_global[token]) if len(a.boxes) else np.zeros((0, 9))
        out[token] = FrameBoxes(boxes, a.names, ev.gt[token].ego_xyz, scores=a.scores)
    return out


def evaluate_drive(gt_json: Path, cfg: AqrConfig, answers: dict[str, FrameAnswer]
                   ) -> tuple[DetectionResult, DriveEval]:
    classes = list(cfg.model.classes)
    ev = drive_eval(gt_json, answers, classes)
    return evaluate(ev.gt, global_answers(ev), classes, cfg.eval), ev


def model_config(checkpoint: str, cfg: AqrConfig) -> ModelConfig:
    """The model config the node will run: the checkpoint's (bundled when empty), else cfg's."""
    from aqr_perception.model.checkpoint import read_model_config
    from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, UNTRAINED

    path = None if checkpoint == UNTRAINED else (checkpoint or BUNDLED_CHECKPOINT)
    return read_model_config(path) if path and Path(path).exists() else cfg.model


def run_eval(bag: Path, gt_json: Path, cfg: AqrConfig, checkpoint: str, mode: str, out_dir: Path,
             device: str = "cpu", quiet: bool = False, submission_path: Path | None = None
             ) -> tuple[DetectionResult, dict]:
    """Predict (replay or offline), score, write the report; returns (result, report dict).
    ``submission_path``: also write the answers in the nuScenes submission format (a
    converted nuScenes drive: its ground truth has the sample tokens)."""
    t0 = time.monotonic()
    cfg = cfg.model_copy(update={"model": model_config(checkpoint, cfg)})   # pictures read sweeps as the node
    if mode == "replay":
        from aqr_perception.evaluation.replay import predict_replay

        answers = predict_replay(bag, cfg, checkpoint, device, log=not quiet)
    else:
        from aqr_perception.model.runtime import DetectorRuntime

        answers = predict_offline(bag, cfg, DetectorRuntime(checkpoint or None, cfg.model, device,
                                                            runtime=cfg.node.runtime))
    result, ev = evaluate_drive(gt_json, cfg, answers)
    if submission_path is not None:
        from aqr_perception.evaluation.submission import submission, write_submission

        write_submission(submission_path, submission(answers, read_ground_truth(gt_json, list(cfg.model.classes)),
                                                     cfg.eval.max_boxes_per_sample))
    seconds = time.monotonic() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    routing_score = cfg.eval.routing_score_threshold
    report = {"bag": str(bag), "mode": mode, "checkpoint": checkpoint or "bundled", "frames": ev.frames_total,
              "frames_with_output": len(ev.answers), "seconds": round(seconds, 1), **result.summary(),
              "per_class_tp": result.per_class_tp, "routing": routing_summary(ev.answers, routing_score)}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    write_pr_curves(out_dir / "pr_curves.png", result)
    n = min(cfg.eval.pictures, len(ev.gt))
    tokens = sorted(ev.gt)[:: max(1, len(ev.gt) // max(1, n))][:n]
    pictures = frame_pictures(bag, gt_json, cfg, ev.answers, tokens, out_dir) if n else []
    md = [f"# Evaluation of {bag.name} ({mode})", "",
          f"{ev.frames_total} frames, {len(ev.answers)} with detector output, {seconds:.1f} s.", "",
          metrics_table({bag.name: result}), "", per_class_table(result), "",
          f"Routing (detections with score >= {routing_score}): " + json.dumps(report["routing"]), "",
          "![PR curves](pr_curves.png)", ""] + [f"![{p.stem}]({p.name})" for p in pictures]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    return result, report
