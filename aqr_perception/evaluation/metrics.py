"""nuScenes detection metrics through the devkit's own functions.

Boxes are evaluated in the global frame (as nuScenes does): predictions in the LiDAR
frame are moved there with the drive's ego poses. Filtering follows the devkit's
``filter_eval_boxes``: class-dependent range by distance to the ego, GT without LiDAR
points removed. AP is averaged over the 0.5/1/2/4 m centre-distance thresholds; TP
errors are taken at 2 m; NDS = (5 mAP + sum(1 - min(1, err))) / 10. Traffic cones have
no attribute/velocity/orientation error, barriers no attribute/velocity error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aqr_perception.config import EvalConfig
from aqr_perception.data.boxes import yaw_quaternion_wxyz
from aqr_perception.evaluation import devkit as dk

#: mmdet3d/CMT default attributes by class, chosen from the predicted speed.
SPEED_THRESHOLD = 0.2


def default_attribute(name: str, speed: float) -> str:
    if name in ("car", "truck", "bus", "trailer", "construction_vehicle"):
        return "vehicle.moving" if speed > SPEED_THRESHOLD else "vehicle.parked"
    if name in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if speed > SPEED_THRESHOLD else "cycle.without_rider"
    if name == "pedestrian":
        return "pedestrian.moving" if speed > SPEED_THRESHOLD else "pedestrian.standing"
    return ""


@dataclass
class FrameBoxes:
    """Boxes of one sample in the global frame.

    boxes (N, 9) ``[x, y, z, dx, dy, dz, yaw, vx, vy]``; names; scores (N,) for
    predictions (None for GT); attributes; num_pts (GT only); ego_xyz (3,).
    """

    boxes: np.ndarray
    names: list[str]
    ego_xyz: np.ndarray
    scores: np.ndarray | None = None
    attributes: list[str] | None = None
    num_pts: np.ndarray | None = None


def _detection_box(token: str, b: np.ndarray, name: str, ego: np.ndarray, score: float, attr: str,
                   num_pts: int) -> dk.DetectionBox:
    return dk.DetectionBox(sample_token=token, translation=tuple(float(v) for v in b[:3]),
                           size=(float(b[4]), float(b[3]), float(b[5])),        # w, l, h
                           rotation=tuple(yaw_quaternion_wxyz(float(b[6]))), velocity=(float(b[7]), float(b[8])),
                           ego_translation=tuple(float(v) for v in b[:3] - ego), num_pts=int(num_pts),
                           detection_name=name, detection_score=float(score), attribute_name=attr)


def to_eval_boxes(frames: dict[str, FrameBoxes], is_gt: bool, cfg: EvalConfig) -> dk.EvalBoxes:
    """Build devkit EvalBoxes, filtered like ``filter_eval_boxes`` (range by class, GT needs points)."""
    out = dk.EvalBoxes()
    for token, f in frames.items():
        boxes = []
        for i, (b, name) in enumerate(zip(f.boxes, f.names)):
            if name not in cfg.class_range:
                continue
            if np.hypot(*(b[:2] - f.ego_xyz[:2])) > cfg.class_range[name]:
                continue
            if is_gt and f.num_pts is not None and f.num_pts[i] == 0:
                continue
            speed = float(np.hypot(b[7], b[8]))
            attr = f.attributes[i] if f.attributes is not None else default_attribute(name, speed)
            boxes.append(_detection_box(token, b, name, f.ego_xyz, 1.0 if f.scores is None else f.scores[i], attr,
                                        -1 if f.num_pts is None else f.num_pts[i]))
        if not is_gt:
            boxes = sorted(boxes, key=lambda x: -x.detection_score)[: cfg.max_boxes_per_sample]
        out.add_boxes(token, boxes)
    return out


@dataclass
class DetectionResult:
    """Metrics of one evaluation (NaN where undefined)."""

    mAP: float
    NDS: float
    tp_errors: dict[str, float]                      # mATE, mASE, mAOE, mAVE, mAAE
    per_class_ap: dict[str, float]
    per_class_tp: dict[str, dict[str, float]]
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)   # at 2 m
    num_gt: int = 0
    num_pred: int = 0
    per_class_gt: dict[str, int] = field(default_factory=dict)      # boxes scored, after the devkit's filters
    per_class_pred: dict[str, int] = field(default_factory=dict)
    per_class_ap_tp: dict[str, float] = field(default_factory=dict)  # AP at the TP threshold (2 m) alone

    def present(self) -> list[str]:
        """The classes with ground truth: the only ones an AP or error can say anything of."""
        return [c for c, n in self.per_class_gt.items() if n > 0]

    @property
    def mAP_present(self) -> float:
        """mAP over the classes present (the devkit's mAP counts an absent class as AP 0)."""
        present = self.present()
        return float(np.mean([self.per_class_ap[c] for c in present])) if present else float("nan")

    @property
    def NDS_present(self) -> float:
        """NDS over the classes present: 5 x mAP_present plus the TP scores, each a mean over
        the present classes that have it, as the devkit does over all classes."""
        present = self.present()
        if not present:
            return float("nan")
        score = 5.0 * self.mAP_present
        for metric in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err"):
            errs = [self.per_class_tp[c][metric] for c in present if not np.isnan(self.per_class_tp[c][metric])]
            score += 1.0 - min(1.0, float(np.mean(errs))) if errs else 0.0
        return score / 10.0

    def summary(self) -> dict:
        return {"mAP": self.mAP, "NDS": self.NDS, "mAP_present": self.mAP_present, "NDS_present": self.NDS_present,
                **self.tp_errors, "per_class_ap": self.per_class_ap, "per_class_gt": self.per_class_gt,
                "per_class_pred": self.per_class_pred, "num_gt": self.num_gt, "num_pred": self.num_pred}


def evaluate(gt: dict[str, FrameBoxes], pred: dict[str, FrameBoxes], classes: list[str], cfg: EvalConfig
             ) -> DetectionResult:
    """Devkit metrics for predictions vs GT (same sample tokens; missing predictions count as misses)."""
    gt_boxes = to_eval_boxes(gt, True, cfg)
    pred_boxes = to_eval_boxes({t: pred.get(t, FrameBoxes(np.zeros((0, 9)), [], gt[t].ego_xyz, np.zeros(0)))
                                for t in gt}, False, cfg)
    dcfg = dk.DetectionConfig(class_range={c: cfg.class_range.get(c, 50.0) for c in classes},
                              dist_fcn="center_distance", dist_ths=list(cfg.dist_thresholds),
                              dist_th_tp=cfg.dist_th_tp, min_recall=cfg.min_recall,
                              min_precision=cfg.min_precision, max_boxes_per_sample=cfg.max_boxes_per_sample,
                              mean_ap_weight=5)
    metrics = dk.DetectionMetrics(dcfg)
    curves, ap_tp = {}, {}
    per_class_tp: dict[str, dict[str, float]] = {}
    for name in classes:
        for th in cfg.dist_thresholds:
            md = dk.accumulate(gt_boxes, pred_boxes, name, dk.center_distance, th)
            ap = dk.calc_ap(md, cfg.min_recall, cfg.min_precision)
            metrics.add_label_ap(name, th, ap)
            if th == cfg.dist_th_tp:
                curves[name] = (md.recall.copy(), md.precision.copy())
                ap_tp[name] = float(ap)
        md = dk.accumulate(gt_boxes, pred_boxes, name, dk.center_distance, cfg.dist_th_tp)
        per_class_tp[name] = {}
        for metric in dk.TP_METRICS:
            if name == "traffic_cone" and metric in ("attr_err", "vel_err", "orient_err"):
                tp = np.nan
            elif name == "barrier" and metric in ("attr_err", "vel_err"):
                tp = np.nan
            else:
                tp = dk.calc_tp(md, cfg.min_recall, metric)
            metrics.add_label_tp(name, metric, tp)
            per_class_tp[name][metric] = float(tp)
    tp = metrics.tp_errors
    names = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}
    return DetectionResult(
        mAP=float(metrics.mean_ap), NDS=float(metrics.nd_score),
        tp_errors={names[k]: float(v) for k, v in tp.items()},
        per_class_ap={c: float(v) for c, v in metrics.mean_dist_aps.items()},
        per_class_tp=per_class_tp, pr_curves=curves,
        num_gt=sum(len(v) for v in gt_boxes.boxes.values()), num_pred=sum(len(v) for v in pred_boxes.boxes.values()),
        per_class_gt={c: sum(b.detection_name == c for v in gt_boxes.boxes.values() for b in v) for c in classes},
        per_class_pred={c: sum(b.detection_name == c for v in pred_boxes.boxes.values() for b in v) for c in classes},
        per_class_ap_tp=ap_tp)


def _within(frame: FrameBoxes, lo: float, hi: float) -> FrameBoxes:
    """The boxes of ``frame`` whose centre lies lo <= d < hi metres from the ego (in x, y)."""
    d = np.hypot(frame.boxes[:, 0] - frame.ego_xyz[0], frame.boxes[:, 1] - frame.ego_xyz[1]) \
        if len(frame.boxes) else np.zeros(0)
    keep = (d >= lo) & (d < hi)
    pick = lambda v: None if v is None else (np.asarray(v)[keep] if isinstance(v, np.ndarray) else  # noqa: E731
                                              [x for x, k in zip(v, keep) if k])
    return FrameBoxes(frame.boxes[keep], pick(frame.names), frame.ego_xyz, pick(frame.scores), pick(frame.attributes),
                      pick(frame.num_pts))


def matched_recall(gt: dk.EvalBoxes, pred: dk.EvalBoxes, threshold: float) -> tuple[int, int]:
    """(GT boxes matched, GT boxes) with the devkit's matching rule: per sample and class,
    predictions by descending score each take the nearest unmatched GT centre closer than
    ``threshold`` metres (strictly, as ``accumulate``)."""
    matched = total = 0
    for token in gt.sample_tokens:
        truth = gt[token]
        total += len(truth)
        taken = [False] * len(truth)
        for p in sorted(pred[token] if token in pred.sample_tokens else [], key=lambda b: -b.detection_score):
            best, best_d = -1, float("inf")
            for i, g in enumerate(truth):
                if taken[i] or g.detection_name != p.detection_name:
                    continue
                d = float(np.hypot(g.translation[0] - p.translation[0], g.translation[1] - p.translation[1]))
                if d < best_d:
                    best, best_d = i, d
            if best_d >= threshold:
                best = -1
            if best >= 0:
                taken[best] = True
                matched += 1
    return matched, total


def by_distance(gt: dict[str, FrameBoxes], pred: dict[str, FrameBoxes], classes: list[str], cfg: EvalConfig
                ) -> dict[str, dict[str, float]]:
    """Per distance band of ``eval.distance_bins`` (from the ego, metres): GT and prediction
    counts, mAP over the classes present in the band, recall at ``dist_th_tp`` and mATE
    (its classes' mean translation error), each band scored as its own evaluation."""
    out = {}
    for lo, hi in cfg.distance_bins:
        g = {t: _within(f, lo, hi) for t, f in gt.items()}
        p = {t: _within(f, lo, hi) for t, f in pred.items()}
        r = evaluate(g, p, classes, cfg)
        matched, total = matched_recall(to_eval_boxes(g, True, cfg), to_eval_boxes(p, False, cfg), cfg.dist_th_tp)
        errs = [r.per_class_tp[c]["trans_err"] for c in r.present() if not np.isnan(r.per_class_tp[c]["trans_err"])]
        out[f"{lo:g}-{hi:g} m"] = {"gt": r.num_gt, "pred": r.num_pred, "mAP_present": r.mAP_present,
                                   "recall": matched / total if total else float("nan"),
                                   "mATE": float(np.mean(errs)) if errs else float("nan")}
    return out
