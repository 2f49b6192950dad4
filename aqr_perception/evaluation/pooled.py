"""Many bags in one evaluation: one pooled score, the per-bag scores beside it.

A single drive is a noisy measure, and the mean of per-bag scores is not the score of
the whole set (a class absent from one bag scores 0 there), so the bags' frames are
pooled into one devkit evaluation, as nuScenes scores a split. Offline, the bags can be
shared over ``torchrun`` ranks (``torchrun --nproc_per_node N -m aqr_perception.cli eval
--mode offline --bag FOLDER``): each rank predicts its share, rank 0 gathers the answers,
scores and writes the report.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from aqr_perception.config import AqrConfig, ConfigError
from aqr_perception.data.ground_truth import read_ground_truth
from aqr_perception.evaluation.answers import FrameAnswer, predict_offline
from aqr_perception.evaluation.evaluate import (
    DriveEval,
    Sweeps,
    answered_only,
    drive_eval,
    global_answers,
    make_output_folders,
    model_config,
    write_report,
)
from aqr_perception.evaluation.metrics import DetectionResult, evaluate


@dataclass
class PooledResult:
    """The pooled score and each bag's own."""

    pooled: DetectionResult
    per_bag: dict[str, DetectionResult]
    frames: int
    frames_with_output: int


def _predict(pairs: list[tuple[Path, Path]], cfg: AqrConfig, checkpoint: str, mode: str, device: str,
             quiet: bool) -> dict[str, dict[str, FrameAnswer]]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():          # one GPU per rank, as torchrun numbers them
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if mode == "replay":
        from aqr_perception.evaluation.replay import predict_replay

        return {bag.name: predict_replay(bag, cfg, checkpoint, device, log=not quiet) for bag, _ in pairs}
    from aqr_perception.model.runtime import DetectorRuntime

    runtime = DetectorRuntime(checkpoint or None, cfg.model, device, runtime=cfg.node.runtime)
    return {bag.name: predict_offline(bag, cfg, runtime) for bag, _ in pairs}


def _gather(answers: dict[str, dict[str, FrameAnswer]]) -> dict[str, dict[str, FrameAnswer]] | None:
    """Under torchrun: every rank's answers to rank 0 (None on the other ranks)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    gathered: list = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(answers, gathered, dst=0)
    rank = dist.get_rank()
    dist.destroy_process_group()
    if rank != 0:
        return None
    return {name: a for part in gathered for name, a in part.items()}


def score_pooled(pairs: list[tuple[Path, Path]], answers: dict[str, dict[str, FrameAnswer]], cfg: AqrConfig,
                 mode: str = "offline") -> tuple[PooledResult, DriveEval]:
    """Each bag scored alone, and all of them as one evaluation."""
    classes = list(cfg.model.classes)
    pooled = DriveEval(gt={})
    per_bag = {}
    for bag, gt_json in pairs:
        ev = drive_eval(gt_json, answers[bag.name], classes, cfg.eval.stamp_tolerance_s, answered_only(cfg, mode))
        if set(ev.lidar_to_global) & set(pooled.lidar_to_global):
            raise ConfigError(f"{bag.name} shares frame stamps with another bag: the pool would mix their frames")
        per_bag[bag.name] = evaluate(ev.gt, global_answers(ev), classes, cfg.eval)
        pooled.gt.update(ev.gt)
        pooled.answers.update(ev.answers)
        pooled.lidar_to_global.update(ev.lidar_to_global)
        pooled.frames_total += ev.frames_total
        pooled.unmatched += ev.unmatched
    result = evaluate(pooled.gt, global_answers(pooled), classes, cfg.eval)
    return PooledResult(result, per_bag, pooled.frames_total, len(pooled.answers)), pooled


def run_pooled_eval(pairs: list[tuple[Path, Path]], cfg: AqrConfig, checkpoint: str, mode: str, out_dir: Path,
                    device: str = "cpu", quiet: bool = False, submission_path: Path | None = None
                    ) -> tuple[PooledResult, dict] | None:
    """Predict every bag (this rank's share under torchrun, offline), score pooled and per
    bag, write the report (evaluate.write_report); None on ranks other than 0."""
    t0 = time.monotonic()
    cfg = cfg.model_copy(update={"model": model_config(checkpoint, cfg)})
    make_output_folders(out_dir, submission_path)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and mode == "replay":
        raise ConfigError("replay evaluation runs in one process (each bag gets its own node): use --mode offline "
                          "under torchrun")
    answers = _predict(pairs[rank::world], cfg, checkpoint, mode, device, quiet)
    if world > 1:
        answers = _gather(answers)
        if answers is None:
            return None
    result, pooled = score_pooled(pairs, answers, cfg, mode)
    if submission_path is not None:
        from aqr_perception.evaluation.submission import submission, write_submission

        merged: dict = {"results": {}}
        for _bag, gt_json in pairs:
            sub = submission(pooled.answers, read_ground_truth(gt_json, list(cfg.model.classes)),
                             cfg.eval.max_boxes_per_sample)
            merged = {"meta": sub["meta"], "results": {**merged["results"], **sub["results"]}}
        write_submission(submission_path, merged)
    sweeps = Sweeps()
    for bag, _ in pairs:
        sweeps.add(bag, cfg.node.lidar_topic, answers[bag.name])
    report = write_report(
        out_dir, f"Evaluation of {len(pairs)} bags ({mode}), pooled", cfg, mode, pooled,
        {"pooled": result.pooled, **result.per_bag}, sweeps,
        {"bags": [str(b) for b, _ in pairs], "checkpoint": checkpoint or "bundled", "ranks": world,
         "per_bag": {name: r.summary() for name, r in result.per_bag.items()}}, time.monotonic() - t0,
        note="The pooled row scores all the bags' frames as one evaluation; the rows below it, each bag alone.")
    return result, report
