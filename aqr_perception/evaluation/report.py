"""The evaluation report: Markdown tables, the router summary, PR curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aqr_perception.evaluation.answers import FrameAnswer
from aqr_perception.evaluation.metrics import DetectionResult


def routing_summary(answers: dict[str, FrameAnswer], min_score: float) -> dict[str, float]:
    """Mean router weights over detections with a score of at least ``min_score``, each over
    the frames that had its modality (NaN when there are none: without LiDAR the LiDAR
    weight biases only masked keys)."""
    def mean(weights: str, available: str) -> tuple[float, int]:
        w = np.concatenate([getattr(a, weights)[a.scores >= min_score] for a in answers.values()
                            if getattr(a, available)] or [np.zeros(0)])
        return (float(w.mean()) if w.size else float("nan")), int(w.size)

    lw, n_lidar = mean("lidar_weight", "lidar_available")
    cw, n_camera = mean("camera_weight", "cameras_available")
    routed = sum(int((a.scores >= min_score).sum()) for a in answers.values())
    return {"mean_lidar_weight": lw, "mean_camera_weight": cw, "routed_detections": routed,
            "with_lidar": n_lidar, "with_cameras": n_camera}


def metrics_table(rows: dict[str, DetectionResult]) -> str:
    """Markdown table, one row per named result: the devkit's mAP / NDS (an absent class
    counts as AP 0 and error 1) and the same over the classes present."""
    head = ("| run | mAP | NDS | mAP present | NDS present | classes present | mATE | mASE | mAOE | mAVE | mAAE "
            "| GT | pred |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, r in rows.items():
        t = r.tp_errors
        lines.append(f"| {name} | {r.mAP:.3f} | {r.NDS:.3f} | {r.mAP_present:.3f} | {r.NDS_present:.3f} | "
                     f"{len(r.present())}/{len(r.per_class_ap)} | {t['mATE']:.3f} | {t['mASE']:.3f} | {t['mAOE']:.3f} "
                     f"| {t['mAVE']:.3f} | {t['mAAE']:.3f} | {r.num_gt} | {r.num_pred} |")
    return "\n".join(lines)


def per_class_table(r: DetectionResult) -> str:
    """Per class: the boxes scored (GT, predictions) and the AP and errors; n/a for a class
    without ground truth (nothing to score) and for errors nuScenes does not define."""
    lines = ["| class | GT | pred | AP | ATE | ASE | AOE | AVE | AAE |", "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if np.isnan(v) else f"{v:.3f}"  # noqa: E731
    for c, ap in r.per_class_ap.items():
        tp, n_gt = r.per_class_tp[c], r.per_class_gt.get(c, 0)
        values = [ap, *(tp[k] for k in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err"))]
        cells = " | ".join("n/a" if n_gt == 0 else fmt(v) for v in values)
        lines.append(f"| {c} | {n_gt} | {r.per_class_pred.get(c, 0)} | {cells} |")
    return "\n".join(lines)


def distance_table(bands: dict[str, dict[str, float]]) -> str:
    """The by-distance bands of :func:`aqr_perception.evaluation.metrics.by_distance`."""
    fmt = lambda v: "n/a" if np.isnan(v) else f"{v:.3f}"  # noqa: E731
    lines = ["| distance | GT | pred | mAP (classes present) | recall at 2 m | mATE |", "|---|---|---|---|---|---|"]
    for band, r in bands.items():
        lines.append(f"| {band} | {r['gt']} | {r['pred']} | {fmt(r['mAP_present'])} | {fmt(r['recall'])} | "
                     f"{fmt(r['mATE'])} |")
    return "\n".join(lines)


def write_distance_plot(path: Path, bands: dict[str, dict[str, float]]) -> None:
    """Bars per distance band: mAP over the classes present and recall at 2 m, GT counts above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bands)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for k, (key, label) in enumerate((("mAP_present", "mAP (classes present)"), ("recall", "recall at 2 m"))):
        values = [0.0 if np.isnan(bands[n][key]) else bands[n][key] for n in names]
        ax.bar(x + (k - 0.5) * 0.38, values, 0.38, label=label)
    for i, n in enumerate(names):
        ax.text(i, 1.02, f"{bands[n]['gt']} GT", ha="center", fontsize=8)
    ax.set(xticks=x, xticklabels=names, ylim=(0, 1.1), xlabel="distance from the ego", ylabel="score",
           title="By distance (each band scored alone)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_pr_curves(path: Path, result: DetectionResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for name, (rec, prec) in result.pr_curves.items():
        if result.per_class_gt.get(name, 1) == 0:
            continue                          # no ground truth: no curve to speak of
        ap = result.per_class_ap_tp.get(name, float("nan"))
        ax.plot(rec, prec, label=f"{name} (AP at 2 m {ap:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"PR curves at 2 m centre distance (mAP over 0.5-4 m {result.mAP:.3f}, NDS {result.NDS:.3f})")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
