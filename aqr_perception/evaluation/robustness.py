"""``aqr-perception robustness``: the same drives under sensor corruptions, for the AQR
model and (optionally) a no-AQR baseline, side by side.

The drives are synthetic held-out ones, generated per condition with the same seeds (so
the scenes and the ground truth are identical; only the sensors differ), or the user's
own bags (``--bag``), of which a corrupted copy is written per condition
(data/corrupt_bag.py). Each condition is evaluated offline with the node's pipeline. The
table reports NDS / mAP, the share of each model's clean NDS kept, and the mean AQR routing
weights (the router should lean on the modality present).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from aqr_perception.config import AqrConfig
from aqr_perception.data.corruptions import CONDITIONS as ALL_CONDITIONS
from aqr_perception.data.synth.drive import generate_drive
from aqr_perception.evaluation.answers import FrameAnswer, predict_offline
from aqr_perception.evaluation.evaluate import drive_eval, global_answers
from aqr_perception.evaluation.metrics import DetectionResult, evaluate
from aqr_perception.evaluation.report import routing_summary

#: which ground truth a corrupted drive is scored against, stated in every robustness report
GT_RULE = ("Every condition is scored against the clean scene's ground truth, filtered as nuScenes filters it "
           "(boxes with LiDAR points) by the clean sweep's point counts: a corruption degrades the sensors, not "
           "the objects, as corruption benchmarks (nuScenes-C, MultiCorrupt) keep the clean annotations. So a box "
           "that reduced_lidar leaves without a point is still scored, and a model has to find it through its "
           "cameras.")
#: the table's rows (time_offset is the sync tests' concern: the node rejects the images, as it should)
CONDITIONS = ("clean", "no_lidar", "no_intensity", "no_cameras", "one_camera_missing", "dark", "fog", "reduced_lidar")
assert set(CONDITIONS) <= set(ALL_CONDITIONS)


def ensure_drives(cfg: AqrConfig, condition: str, seeds: list[int], out: Path) -> list[tuple[Path, Path]]:
    """Generate (once) the drives of one condition; returns (bag, gt) pairs."""
    synth = cfg.synth.model_copy()
    synth.corruption = condition                  # validated (model_copy(update=...) would not check it)
    c = cfg.model_copy(update={"synth": synth})
    pairs = []
    for seed in seeds:
        name = f"drive_{seed:04d}_{condition}"
        bag, gt = out / name, out / f"{name}.gt.json"
        if not (bag.is_dir() and gt.is_file()):
            generate_drive(c, out, name, seed)
        pairs.append((bag, gt))
    return pairs


def corrupted_bags(cfg: AqrConfig, condition: str, pairs: list[tuple[Path, Path]], out: Path
                   ) -> list[tuple[Path, Path]]:
    """The user's (bag, gt) pairs under one condition: a corrupted copy of each bag in ``out``
    (written once), its ground truth beside it unchanged; ``clean`` is the bags themselves."""
    from aqr_perception.data.corrupt_bag import corrupt_bag

    if condition == "clean":
        return list(pairs)
    corrupted = []
    for i, (bag, gt) in enumerate(pairs):
        copy, copy_gt = out / bag.name, out / gt.name
        if not (copy.is_dir() and copy_gt.is_file()):
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(copy, ignore_errors=True)
            corrupt_bag(bag, copy, condition, cfg, seed=i)
            shutil.copyfile(gt, copy_gt)
        corrupted.append((copy, copy_gt))
    return corrupted


def evaluate_condition(cfg: AqrConfig, pairs: list[tuple[Path, Path]], runtime
                       ) -> tuple[DetectionResult, dict[str, FrameAnswer]]:
    """All drives of a condition pooled into one nuScenes evaluation; also the answers."""
    gt_all, pred_global, pred_local = {}, {}, {}
    for bag, gt_json in pairs:
        ev = drive_eval(gt_json, predict_offline(bag, cfg, runtime), list(cfg.model.classes),
                        cfg.eval.stamp_tolerance_s)
        gt_all.update(ev.gt)
        pred_global.update(global_answers(ev))
        pred_local.update(ev.answers)
    return evaluate(gt_all, pred_global, list(cfg.model.classes), cfg.eval), pred_local


def run_robustness(cfg: AqrConfig, models: dict[str, str], seeds: list[int], out: Path,
                   conditions: tuple[str, ...] = CONDITIONS, device: str = "cpu", log=print,
                   bags: list[tuple[Path, Path]] | None = None) -> dict:
    """Evaluate every model on every condition, over the synthetic drives of ``seeds`` or the
    user's ``bags`` ((bag, gt) pairs); writes robustness.json / .md in ``out``."""
    from aqr_perception.model.runtime import DetectorRuntime

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    runtimes = {name: DetectorRuntime(path, cfg.model, device) for name, path in models.items()}
    for condition in conditions:
        t0 = time.monotonic()
        pairs = (corrupted_bags(cfg, condition, bags, out / "data" / condition) if bags is not None
                 else ensure_drives(cfg, condition, seeds, out / "data" / condition))
        for name, rt in runtimes.items():
            result, preds = evaluate_condition(cfg, pairs, rt)
            routing = (routing_summary(preds, cfg.eval.routing_score_threshold)
                       if rt.cfg.aqr.learned_routing else {})    # no router: no weights to show
            results.setdefault(condition, {})[name] = {"NDS": result.NDS, "mAP": result.mAP, **result.tp_errors,
                                                       "num_gt": result.num_gt, **routing}
        log(f"{condition:<20} " + "  ".join(f"{n}: NDS {r['NDS']:.3f} mAP {r['mAP']:.3f}"
                                            for n, r in results[condition].items()) +
            f"  ({time.monotonic() - t0:.0f} s)")
    report = {"seeds": seeds if bags is None else None, "bags": [str(b) for b, _ in bags or []], "models": models,
              "results": results}
    (out / "robustness.json").write_text(json.dumps(report, indent=1, default=float))
    drives = (f"Your bags, a corrupted copy per condition in {out / 'data'}: " + ", ".join(b.name for b, _ in bags)
              if bags is not None else f"Synthetic held-out drives of seeds {', '.join(map(str, seeds))}.")
    (out / "robustness.md").write_text(drives + "\n\n" + robustness_table(results, list(models)) + "\n\n"
                                       + GT_RULE + "\n")
    return report


def robustness_table(results: dict[str, dict[str, dict]], models: list[str]) -> str:
    """Markdown: per condition and model NDS, mAP, share of clean NDS, routing weights."""
    head = "| condition | " + " | ".join(f"{m} NDS | {m} mAP | {m} NDS kept | {m} lidar w | {m} camera w"
                                        for m in models) + " |"
    lines = [head, "|---|" + "---|" * (5 * len(models))]
    clean = results.get("clean", {})
    for cond, per_model in results.items():
        cells = []
        for m in models:
            r = per_model[m]
            kept = r["NDS"] / clean[m]["NDS"] if m in clean and clean[m]["NDS"] > 0 else float("nan")
            fmt = lambda v: "n/a" if v != v else f"{v:.3f}"  # noqa: E731
            cells += [fmt(r["NDS"]), fmt(r["mAP"]), fmt(kept), fmt(r.get("mean_lidar_weight", float("nan"))),
                      fmt(r.get("mean_camera_weight", float("nan")))]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


