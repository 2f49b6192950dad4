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

from aqr_perception.config import AqrConfig, ConfigError, ModelConfig, output_folder
from aqr_perception.data.boxes import transform_boxes
from aqr_perception.data.ground_truth import read_ground_truth
from aqr_perception.evaluation.answers import FrameAnswer, predict_offline
from aqr_perception.evaluation.metrics import DetectionResult, FrameBoxes, by_distance, evaluate
from aqr_perception.evaluation.pictures import frame_images, frame_pictures, write_animation
from aqr_perception.evaluation.report import (
    distance_table,
    metrics_table,
    per_class_table,
    routing_summary,
    write_distance_plot,
    write_pr_curves,
)


@dataclass
class DriveEval:
    """One drive's evaluation: GT (global frame) and the answers matched to it, per sample
    token (str(stamp_ns) of the GT frame); ``unmatched``: GT frames no answer came near."""

    gt: dict[str, FrameBoxes]
    answers: dict[str, FrameAnswer] = field(default_factory=dict)
    lidar_to_global: dict[str, np.ndarray] = field(default_factory=dict)
    frames_total: int = 0
    unmatched: list[str] = field(default_factory=list)


def match_stamps(gt_ns: list[int], answer_ns: list[int], tolerance_ns: int) -> dict[int, int]:
    """GT stamp -> the answer stamp nearest to it, when within ``tolerance_ns`` (ties: the
    earlier answer). Each answer serves at most one GT frame (the nearest GT takes it)."""
    answers = np.sort(np.asarray(answer_ns, dtype=np.int64))
    pairs = []
    for g in gt_ns:
        i = int(np.searchsorted(answers, g))
        near = [j for j in (i - 1, i) if 0 <= j < len(answers)]
        if near:
            j = min(near, key=lambda j: (abs(int(answers[j]) - g), int(answers[j])))
            if abs(int(answers[j]) - g) <= tolerance_ns:
                pairs.append((abs(int(answers[j]) - g), g, int(answers[j])))
    out, used = {}, set()
    for _, g, a in sorted(pairs):
        if a not in used:
            out[g] = a
            used.add(a)
    return out


def drive_eval(gt_json: Path, answers: dict[str, FrameAnswer], classes: list[str], tolerance_s: float = 0.0,
               answered_only: bool = False) -> DriveEval:
    """GT, ego poses and the answers of the GT's frames, for one drive. An answer belongs to
    the GT frame nearest to its stamp within ``tolerance_s`` (eval.stamp_tolerance_s: a GT
    file and a bag rarely agree to the nanosecond once converted, rounded or re-stamped).
    A GT frame without an answer scores as all misses, unless ``answered_only`` (a real-time
    replay, where the node skips what it has no time for): then it leaves the scored GT and
    is only listed in ``unmatched``."""
    frames = read_ground_truth(gt_json, classes)
    gt = {str(s): FrameBoxes(f.global_boxes, f.names, f.ego_xyz, attributes=f.attributes, num_pts=f.num_lidar_pts)
          for s, f in frames.items()}
    matched = match_stamps(list(frames), [int(t) for t in answers], round(tolerance_s * 1e9))
    unmatched = [str(s) for s in frames if s not in matched]
    if answered_only:
        gt = {str(s): gt[str(s)] for s in frames if s in matched}
    return DriveEval(gt=gt, answers={str(g): answers[str(a)] for g, a in matched.items()},
                     lidar_to_global={str(s): f.lidar_to_global for s, f in frames.items()}, frames_total=len(frames),
                     unmatched=unmatched)


def global_answers(ev: DriveEval) -> dict[str, FrameBoxes]:
    """The answers in the global frame, as the metric takes them."""
    out = {}
    for token, a in ev.answers.items():
        boxes = transform_boxes(a.boxes, ev.lidar_to_global[token]) if len(a.boxes) else np.zeros((0, 9))
        out[token] = FrameBoxes(boxes, a.names, ev.gt[token].ego_xyz, scores=a.scores)
    return out


def answered_only(cfg: AqrConfig, mode: str) -> bool:
    """Whether unanswered GT frames leave the score: only in a real-time replay."""
    return mode == "replay" and cfg.eval.replay_rate > 0


def evaluate_drive(gt_json: Path, cfg: AqrConfig, answers: dict[str, FrameAnswer], mode: str = "offline"
                   ) -> tuple[DetectionResult, DriveEval]:
    classes = list(cfg.model.classes)
    ev = drive_eval(gt_json, answers, classes, cfg.eval.stamp_tolerance_s, answered_only(cfg, mode))
    return evaluate(ev.gt, global_answers(ev), classes, cfg.eval), ev


@dataclass
class Sweeps:
    """How many LiDAR sweeps the evaluated bags hold, how many the node answered, over how
    many seconds of bag time."""

    in_bags: int = 0
    answered: int = 0
    bag_seconds: float = 0.0

    def add(self, bag: Path, lidar_topic: str, answers: dict[str, FrameAnswer]) -> None:
        from rosbags.rosbag2 import Reader

        with Reader(bag) as reader:
            self.in_bags += sum(c.msgcount for c in reader.connections if c.topic == lidar_topic)
            self.bag_seconds += (reader.end_time - reader.start_time) / 1e9
        self.answered += len(answers)


def run_conditions(cfg: AqrConfig, mode: str, unmatched: int, sweeps: Sweeps) -> str:
    """What the numbers depend on, in words: how the bag was played, the node's score
    threshold and the stamp matching."""
    if mode == "offline":
        played = "Offline: the node's frame pipeline in this process, over every sweep."
    elif not answered_only(cfg, mode):
        played = "Replayed stepwise to the node over DDS: each sweep waited for the node's answer to the last."
    else:
        hz = lambda n: n / sweeps.bag_seconds if sweeps.bag_seconds > 0 else float("nan")  # noqa: E731
        played = (f"Replayed to the node over DDS at {cfg.eval.replay_rate:g}x the bag's pace (eval.replay_rate), "
                  f"as a vehicle feeds it: the node answered {sweeps.answered} of {sweeps.in_bags} sweeps "
                  f"({hz(sweeps.answered):.2f} Hz of the bag's {hz(sweeps.in_bags):.2f} Hz). The {unmatched} GT "
                  "frame(s) it left unanswered are not scored: the scores are those of the answered frames.")
    return (f"{played} The node ran at score threshold {cfg.eval.score_threshold:g} (eval.score_threshold; its own "
            f"default is {type(cfg.node).model_fields['score_threshold'].default:g}): nuScenes' mAP integrates "
            "precision over recall, so the evaluation keeps the low-scoring detections a vehicle would not publish. "
            f"Answers are matched to the GT frame nearest their stamp within {1e3 * cfg.eval.stamp_tolerance_s:g} ms "
            f"(eval.stamp_tolerance_s); {unmatched} GT frame(s) had no answer that near"
            + (" and are scored as all missed." if not answered_only(cfg, mode) else "."))


def write_report(out_dir: Path, title: str, cfg: AqrConfig, mode: str, ev: DriveEval,
                 rows: dict[str, DetectionResult], sweeps: Sweeps, info: dict, seconds: float,
                 pictures: list[Path] = (), note: str = "") -> dict:
    """report.json, report.md, pr_curves.png and by_distance.png in ``out_dir``, for the
    first of ``rows`` (the headline result; the others are listed beside it). Returns the
    report dict."""
    result = next(iter(rows.values()))
    routing_score = cfg.eval.routing_score_threshold
    bands = by_distance(ev.gt, global_answers(ev), list(cfg.model.classes), cfg.eval)
    scored = len(ev.gt)
    report = {**info, "mode": mode, "frames": ev.frames_total, "frames_with_output": len(ev.answers),
              "frames_scored": scored, "frames_unmatched": len(ev.unmatched),
              "unmatched_tokens": ev.unmatched,
              "replay_rate": cfg.eval.replay_rate if mode == "replay" else None,
              "sweeps_in_bag": sweeps.in_bags, "sweeps_answered": sweeps.answered,
              "answered_rate_hz": sweeps.answered / sweeps.bag_seconds if sweeps.bag_seconds > 0 else None,
              "stamp_tolerance_s": cfg.eval.stamp_tolerance_s, "score_threshold": cfg.eval.score_threshold,
              "seconds": round(seconds, 1), **result.summary(), "per_class_tp": result.per_class_tp,
              "by_distance": bands, "routing": routing_summary(ev.answers, routing_score)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    write_pr_curves(out_dir / "pr_curves.png", result)
    write_distance_plot(out_dir / "by_distance.png", bands)
    md = [f"# {title}", "",
          f"{ev.frames_total} frames, {len(ev.answers)} with detector output, {scored} scored, {seconds:.1f} s.", "",
          run_conditions(cfg, mode, len(ev.unmatched), sweeps), "",
          metrics_table(rows), "", *([note, ""] if note else []), per_class_table(result), "",
          "By distance from the ego (each band scored alone):", "", distance_table(bands), "",
          "![By distance](by_distance.png)", "",
          f"Routing (detections with score >= {routing_score}): " + json.dumps(report["routing"]), "",
          "![PR curves](pr_curves.png)", ""] + [f"![{p.stem}]({p.name})" for p in pictures]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    return report


def model_config(checkpoint: str, cfg: AqrConfig) -> ModelConfig:
    """The model config the node will run: the checkpoint's (bundled when empty), else cfg's."""
    from aqr_perception.model.checkpoint import read_model_config
    from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, UNTRAINED

    if checkpoint == UNTRAINED or not (checkpoint or BUNDLED_CHECKPOINT.exists()):
        return cfg.model
    path = Path(checkpoint or BUNDLED_CHECKPOINT)
    if not path.is_file():        # before the node starts (it would say the same, and exit)
        raise ConfigError(f"checkpoint {path}: no such file")
    return read_model_config(path)


def make_output_folders(out_dir: Path, submission_path: Path | None = None, record: Path | None = None) -> None:
    """The folders the evaluation writes into, made before its work (once the checkpoint is
    known good): ConfigError in one line for one that cannot be (config.output_folder)."""
    output_folder(out_dir)
    for flag, path in (("--submission", submission_path), ("--record", record)):
        if path is not None:
            output_folder(path.parent, f"{flag} {path}:")


def run_eval(bag: Path, gt_json: Path, cfg: AqrConfig, checkpoint: str, mode: str, out_dir: Path,
             device: str = "cpu", quiet: bool = False, submission_path: Path | None = None,
             record: Path | None = None) -> tuple[DetectionResult, dict]:
    """Predict (replay or offline), score, write the report; returns (result, report dict).
    ``submission_path``: also write the answers in the nuScenes submission format (a
    converted nuScenes drive: its ground truth has the sample tokens)."""
    t0 = time.monotonic()
    cfg = cfg.model_copy(update={"model": model_config(checkpoint, cfg)})   # pictures read sweeps as the node
    make_output_folders(out_dir, submission_path, record)
    if mode == "replay":
        from aqr_perception.evaluation.replay import predict_replay

        answers = predict_replay(bag, cfg, checkpoint, device, log=not quiet, record=record)
    else:
        from aqr_perception.model.runtime import DetectorRuntime

        answers = predict_offline(bag, cfg, DetectorRuntime(checkpoint or None, cfg.model, device,
                                                            runtime=cfg.node.runtime))
    result, ev = evaluate_drive(gt_json, cfg, answers, mode)
    if submission_path is not None:
        from aqr_perception.evaluation.submission import submission, write_submission

        write_submission(submission_path, submission(ev.answers, read_ground_truth(gt_json, list(cfg.model.classes)),
                                                     cfg.eval.max_boxes_per_sample))
    sweeps = Sweeps()
    sweeps.add(bag, cfg.node.lidar_topic, answers)
    n = min(cfg.eval.pictures, len(ev.gt))
    tokens = sorted(ev.gt)[:: max(1, len(ev.gt) // max(1, n))][:n]
    # one pass draws the chosen frames, or every frame when the animation needs them all
    drawn = frame_images(bag, gt_json, cfg, ev.answers, sorted(ev.lidar_to_global) if cfg.eval.animation else tokens) \
        if tokens or cfg.eval.animation else []
    pictures = frame_pictures([(t, p) for t, p in drawn if t in tokens], out_dir)
    if cfg.eval.animation and write_animation([p for _, p in drawn], out_dir / "replay.gif"):
        pictures = [out_dir / "replay.gif", *pictures]
    report = write_report(out_dir, f"Evaluation of {bag.name} ({mode})", cfg, mode, ev, {bag.name: result}, sweeps,
                          {"bag": str(bag), "checkpoint": checkpoint or "bundled"}, time.monotonic() - t0, pictures)
    return result, report
