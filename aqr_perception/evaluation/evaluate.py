"""``aqr-perception eval``: detections of a drive bag vs its ground truth.

Two ways to get the detections, which must agree:

* replay (default): the real node runs as its own process; this process plays the
  bag's sensor topics to it over loopback DDS with /clock, stepwise (each LiDAR sweep
  waits until the node has answered the previous one, so nothing is skipped), and
  records Detection3DArray / DetectionVelocityArray / QueryRouting by stamp;
* offline: the same FramePipeline the node uses, fed from the bag in this process.

Predictions (LiDAR frame) are moved to the global frame with the drive's ego poses and
scored with the nuScenes devkit (``evaluation.metrics``). A JSON + Markdown report, PR
curves and per-frame pictures are written to the output folder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from aqr_perception.config import NODE_NAME, AqrConfig, ConfigError
from aqr_perception.data.bag_order import node_pose_wait
from aqr_perception.data.bag_reader import feed_bag
from aqr_perception.data.boxes import transform_boxes
from aqr_perception.data.typestore import project_typestore
from aqr_perception.evaluation.metrics import DetectionResult, FrameBoxes, evaluate
from aqr_perception.ros.pipeline import FramePipeline
from aqr_perception.stamps import header_ns

NODE_START_TIMEOUT_S = 120.0  # the node process loads torch and the model
NODE_SUBSCRIBE_GRACE_S = 5.0  # once the node is up, its subscriptions are discovered within this
ROUTING_SCORE = 0.3          # routing weights are averaged over detections at least this confident
STEP_TIMEOUT_S = 60.0
REPLAY_STARTUP_WAIT_S = 10.0  # the first cloud waits for every camera (a camera absent from the bag costs this once)
REPLAY_CAMERA_WAIT_S = 1.0    # an image really missing from the bag costs this, per frame


@dataclass
class FramePrediction:
    """Detections of one frame in the LiDAR frame + routing weights (last layer) + which
    modalities the model had (a missing modality's keys are all masked: its weight then
    changes nothing and says nothing)."""

    boxes: np.ndarray
    scores: np.ndarray
    names: list[str]
    lidar_weight: np.ndarray
    camera_weight: np.ndarray
    lidar_available: bool = True
    cameras_available: bool = True


@dataclass
class DriveEval:
    """Inputs and outputs of one drive's evaluation."""

    gt: dict[str, FrameBoxes]
    pred: dict[str, FramePrediction] = field(default_factory=dict)
    lidar_to_global: dict[str, np.ndarray] = field(default_factory=dict)
    frames_total: int = 0


def load_gt_frames(gt_json: Path) -> tuple[dict[str, FrameBoxes], dict[str, np.ndarray]]:
    """GT FrameBoxes (global frame) and lidar->global per sample token (str(stamp_ns))."""
    from scipy.spatial.transform import Rotation

    data = json.loads(Path(gt_json).read_text())
    lidar_to_ego = np.asarray(data["meta"]["lidar_to_ego"])
    gt, poses = {}, {}
    for f in data["frames"]:
        w, x, y, z = f["ego_pose"]["rotation"]
        ego = np.eye(4)
        ego[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
        ego[:3, 3] = f["ego_pose"]["translation"]
        token = str(f["stamp_ns"])
        rows = [[*b["translation"], b["size"][1], b["size"][0], b["size"][2],
                 2 * np.arctan2(b["rotation"][3], b["rotation"][0]), *b["velocity"]] for b in f["boxes"]]
        gt[token] = FrameBoxes(np.array(rows, dtype=np.float64).reshape(-1, 9), [b["detection_name"] for b in f["boxes"]],
                               ego[:3, 3].copy(), attributes=[b["attribute_name"] for b in f["boxes"]],
                               num_pts=np.array([b["num_lidar_pts"] for b in f["boxes"]], dtype=np.int64))
        poses[token] = ego @ lidar_to_ego
    return gt, poses


def global_predictions(ev: DriveEval) -> dict[str, FrameBoxes]:
    out = {}
    for token, p in ev.pred.items():
        T = ev.lidar_to_global[token]
        out[token] = FrameBoxes(transform_boxes(p.boxes, T) if len(p.boxes) else np.zeros((0, 9)), p.names,
                                ev.gt[token].ego_xyz, scores=p.scores)
    return out


# ----------------------------------------------------------------------- offline
def predict_offline(bag: Path, cfg: AqrConfig, runtime, keep_inputs: set[str] | None = None,
                    inputs_out: dict | None = None) -> dict[str, FramePrediction]:
    """Run the node's FramePipeline over the bag in this process."""
    node_cfg = eval_node_config(cfg)
    pipeline = FramePipeline(node_cfg, runtime)
    names = list(runtime.cfg.classes)
    preds: dict[str, FramePrediction] = {}

    def on_cloud(cloud) -> None:
        out = pipeline.process(cloud)
        token = str(header_ns(cloud))
        if out.status != "ok":
            return
        d, arrays = out.detections, out.inputs.arrays
        preds[token] = FramePrediction(d.boxes, d.scores, [names[int(i)] for i in d.labels],
                                       d.lidar_weight[:, -1] if len(d) else np.zeros(0),
                                       d.camera_weight[:, -1] if len(d) else np.zeros(0),
                                       bool(arrays.lidar_valid), bool(arrays.camera_valid.any()))
        if inputs_out is not None and keep_inputs is not None and token in keep_inputs:
            inputs_out[token] = out.inputs

    feed_bag(bag, pipeline, on_cloud)
    return preds


def _model_config(checkpoint: str, cfg: AqrConfig):
    """The model config the node will run: the checkpoint's (bundled when empty), else cfg's."""
    from aqr_perception.model.checkpoint import read_model_config
    from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, UNTRAINED

    path = None if checkpoint == UNTRAINED else (checkpoint or BUNDLED_CHECKPOINT)
    return read_model_config(path) if path and Path(path).exists() else cfg.model


def eval_node_config(cfg: AqrConfig):
    """The node settings used for evaluation: every detection the metric may use."""
    return cfg.node.model_copy(update={
        "score_threshold": cfg.eval.score_threshold, "max_detections": cfg.eval.max_boxes_per_sample,
        "qos_reliability": "reliable"})


# ------------------------------------------------------------------------ replay
def replay_node_config(cfg: AqrConfig, checkpoint: str, device: str):
    """The node settings of a replay: the user's (``cfg.node``: topics, frames, cameras...)
    with every detection the metric may use, lossless QoS, the evaluated checkpoint (empty:
    the bundled one) and waits that let a cloud's inputs, which precede it in the bag, land
    before it is used."""
    node_cfg = eval_node_config(cfg)
    sync = node_cfg.sync.model_copy(update={
        "calibration_wait_s": REPLAY_STARTUP_WAIT_S, "camera_wait_s": REPLAY_CAMERA_WAIT_S})
    return node_cfg.model_copy(update={"qos_depth": 20, "device": device, "publish_markers": False, "sync": sync,
                                       "checkpoint": checkpoint})


def write_node_params(node_cfg, path: Path) -> Path:
    """A ROS parameter file (``/**: ros__parameters``) holding every node setting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": node_cfg.model_dump(mode="json")}}, sort_keys=False))
    return path


def check_bag_topics(bag: Path, node_cfg) -> None:
    """Fail at once when the bag has no cloud on the node's LiDAR topic (the usual cause:
    a bag recorded with other topic names than the node settings)."""
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
    if node_cfg.lidar_topic not in topics:
        clouds = sorted(t for t, ty in topics.items() if ty == "sensor_msgs/msg/PointCloud2")
        raise ConfigError(f"{bag}: no messages on the node's lidar_topic {node_cfg.lidar_topic}; the bag's "
                           f"PointCloud2 topics: {', '.join(clouds) or 'none'} (set node.lidar_topic with --set or "
                           "the node's parameter file with --node-params)")


def wait_for_node_inputs(player, probe, node_cfg, node_proc, spin) -> None:
    """Spin until the node subscribes to every played input topic. Once the node is up
    (its detections publisher is seen), topics still without a subscriber after
    ``NODE_SUBSCRIBE_GRACE_S`` are named in the error."""
    wanted = [t for t in node_cfg.input_topics() if t in player.publishers]
    detections = f"/{NODE_NAME}/detections"
    up_since = None
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while not player.wait_for_subscribers(wanted, 0.2, spin):
        if node_proc.poll() is not None:
            raise RuntimeError(f"the node exited with code {node_proc.returncode} before subscribing")
        now = time.monotonic()
        if up_since is None and probe.count_publishers(detections) > 0:
            up_since = now
        if (up_since is not None and now - up_since > NODE_SUBSCRIBE_GRACE_S) or now > deadline:
            missing = [t for t in wanted if player.publishers[t].get_subscription_count() == 0]
            raise ConfigError(f"the node did not subscribe to {', '.join(missing)} (played from the bag): "
                               "the node settings name other topics (check node.image_topic_format, "
                               "node.camera_names, node.image_transport, node.extrinsics_source)")


def predict_replay(bag: Path, cfg: AqrConfig, checkpoint: str, device: str = "cpu",
                   log: bool = True) -> dict[str, FramePrediction]:
    """Play the bag to the node process over DDS, stepwise, and record its outputs.

    ``cfg.model`` must be the model the node will run (the checkpoint's: :func:`run_eval`
    puts it there): whether the node needs ``/tf`` (multi-sweep) is read from it.
    """
    from aqr_perception.ros.dds_env import apply_loopback_dds_defaults

    apply_loopback_dds_defaults()
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import Detection3DArray

    from aqr_perception.msg import DetectionVelocityArray, QueryRouting
    from aqr_perception.ros.player import BagPlayer

    node_cfg = replay_node_config(cfg, checkpoint, device)
    check_bag_topics(bag, node_cfg)
    params_dir = tempfile.TemporaryDirectory(prefix="aqr_eval_")
    params_file = write_node_params(node_cfg, Path(params_dir.name) / "node.param.yaml")
    cmd = [sys.executable, "-m", "aqr_perception.ros.node", "--ros-args", "--params-file", str(params_file),
           "-p", "use_sim_time:=true"]
    if not log:
        cmd += ["--log-level", "warn"]
    node_proc = subprocess.Popen(cmd, env=os.environ.copy())
    ctx = Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node("aqr_eval_player", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(probe)
    got: dict[str, dict[str, object]] = {"det": {}, "vel": {}, "routing": {}}
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    key = lambda m: str(header_ns(m))  # noqa: E731
    probe.create_subscription(Detection3DArray, f"/{NODE_NAME}/detections",
                              lambda m: got["det"].__setitem__(key(m), m), qos)
    probe.create_subscription(DetectionVelocityArray, f"/{NODE_NAME}/velocities",
                              lambda m: got["vel"].__setitem__(key(m), m), qos)
    probe.create_subscription(QueryRouting, f"/{NODE_NAME}/routing",
                              lambda m: got["routing"].__setitem__(key(m), m), qos)
    spin = lambda s: executor.spin_once(timeout_sec=s)  # noqa: E731
    try:
        multi_sweep = cfg.model.lidar.sweeps > 1
        player = BagPlayer(probe, bag, exclude=[cfg.synth.gt_topic, cfg.synth.gt_velocity_topic]
                           + ([] if multi_sweep else ["/tf"]), publish_clock=True)
        # every played input must be matched: a message published before discovery is lost
        wait_for_node_inputs(player, probe, node_cfg, node_proc, spin)
        outstanding: list[str] = []

        def gate(topic: str, stamp: int) -> None:
            # nothing is published while a sweep is being processed, so the node associates
            # exactly the images that preceded it in the bag (as offline does)
            if outstanding:
                end = time.monotonic() + STEP_TIMEOUT_S
                while outstanding[0] not in got["routing"] and time.monotonic() < end:
                    if node_proc.poll() is not None:
                        raise RuntimeError(f"the node exited with code {node_proc.returncode}")
                    spin(0.01)
                outstanding.clear()
            if topic == cfg.node.lidar_topic:
                end = time.monotonic() + 0.05     # let the earlier messages of this instant arrive first
                while time.monotonic() < end:
                    spin(0.005)
                outstanding.append(str(stamp))

        # the same message order as offline (feed_bag): a /tf recorded just after its cloud goes first
        order = (node_pose_wait(cfg.node.lidar_topic, cfg.node.sync.camera_wait_s, project_typestore())
                 if multi_sweep else None)
        player.play(rate=0.0, spin=spin, gate=gate, order=order)
        gate("", 0)
        for _ in range(10):
            spin(0.02)
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.shutdown(context=ctx)
        node_proc.terminate()
        try:
            node_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node_proc.kill()
        params_dir.cleanup()
    preds = {}
    for token, det in got["det"].items():
        vel = got["vel"].get(token)
        routing = got["routing"].get(token)
        boxes, scores, names = [], [], []
        for i, d in enumerate(det.detections):
            c, s = d.bbox.center, d.bbox.size
            yaw = 2 * np.arctan2(c.orientation.z, c.orientation.w)
            v = vel.velocities[i].velocity if vel is not None else None
            boxes.append([c.position.x, c.position.y, c.position.z, s.x, s.y, s.z, yaw,
                          v.x if v else 0.0, v.y if v else 0.0])
            scores.append(d.results[0].hypothesis.score)
            names.append(d.results[0].hypothesis.class_id)
        lw = np.array([r.lidar_weight for r in routing.detections]) if routing else np.zeros(len(boxes))
        cw = np.array([r.camera_weight for r in routing.detections]) if routing else np.zeros(len(boxes))
        preds[token] = FramePrediction(np.array(boxes, dtype=np.float64).reshape(-1, 9), np.array(scores), names,
                                       lw, cw, bool(routing.lidar_available) if routing else True,
                                       bool(routing.cameras_available) if routing else True)
    return preds


# ------------------------------------------------------------------------ report
def routing_summary(preds: dict[str, FramePrediction]) -> dict[str, float]:
    """Mean router weights over confident detections, each over the frames that had its
    modality (NaN when there are none: without LiDAR the LiDAR weight biases only masked keys)."""
    def mean(weights: str, available: str) -> tuple[float, int]:
        w = np.concatenate([getattr(p, weights)[p.scores >= ROUTING_SCORE] for p in preds.values()
                            if getattr(p, available)] or [np.zeros(0)])
        return (float(w.mean()) if w.size else float("nan")), int(w.size)

    lw, n_lidar = mean("lidar_weight", "lidar_available")
    cw, n_camera = mean("camera_weight", "cameras_available")
    routed = sum(int((p.scores >= ROUTING_SCORE).sum()) for p in preds.values())
    return {"mean_lidar_weight": lw, "mean_camera_weight": cw, "routed_detections": routed,
            "with_lidar": n_lidar, "with_cameras": n_camera}


def drive_eval(gt_json: Path, preds: dict[str, FramePrediction]) -> DriveEval:
    """GT, ego poses and the predictions of the GT's frames, for one drive."""
    gt, poses = load_gt_frames(gt_json)
    return DriveEval(gt=gt, pred={t: p for t, p in preds.items() if t in gt}, lidar_to_global=poses,
                     frames_total=len(gt))


def evaluate_drive(bag: Path, gt_json: Path, cfg: AqrConfig, preds: dict[str, FramePrediction]
                   ) -> tuple[DetectionResult, DriveEval]:
    ev = drive_eval(gt_json, preds)
    return evaluate(ev.gt, global_predictions(ev), list(cfg.model.classes), cfg.eval), ev


def metrics_table(rows: dict[str, DetectionResult]) -> str:
    """Markdown table, one row per named result."""
    head = "| run | mAP | NDS | mATE | mASE | mAOE | mAVE | mAAE | GT | pred |\n|---|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for name, r in rows.items():
        t = r.tp_errors
        lines.append(f"| {name} | {r.mAP:.3f} | {r.NDS:.3f} | {t['mATE']:.3f} | {t['mASE']:.3f} | {t['mAOE']:.3f} | "
                     f"{t['mAVE']:.3f} | {t['mAAE']:.3f} | {r.num_gt} | {r.num_pred} |")
    return "\n".join(lines)


def per_class_table(r: DetectionResult) -> str:
    lines = ["| class | AP | ATE | ASE | AOE | AVE | AAE |", "|---|---|---|---|---|---|---|"]
    for c, ap in r.per_class_ap.items():
        tp = r.per_class_tp[c]
        fmt = lambda v: "n/a" if np.isnan(v) else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {c} | {ap:.3f} | {fmt(tp['trans_err'])} | {fmt(tp['scale_err'])} | {fmt(tp['orient_err'])} "
                     f"| {fmt(tp['vel_err'])} | {fmt(tp['attr_err'])} |")
    return "\n".join(lines)


def write_pr_curves(path: Path, result: DetectionResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for name, (rec, prec) in result.pr_curves.items():
        ax.plot(rec, prec, label=f"{name} (AP {result.per_class_ap[name]:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"PR curves at 2 m centre distance (mAP {result.mAP:.3f}, NDS {result.NDS:.3f})")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def frame_pictures(bag: Path, gt_json: Path, cfg: AqrConfig, preds: dict[str, FramePrediction], tokens: list[str],
                   out_dir: Path) -> list[Path]:
    """BEV + camera overlays (GT white, predictions by class) of the chosen frames."""
    from aqr_perception.data.bag_reader import load_ground_truth
    from aqr_perception.data.pictures import compose, draw_bev, draw_camera, save_png
    from aqr_perception.data.rig import Camera
    from aqr_perception.ros.conversions import reduce_intrinsics

    gts = load_ground_truth(gt_json, list(cfg.model.classes))
    pipeline = FramePipeline(eval_node_config(cfg), input_hw=(cfg.model.image.input_height,
                                                              cfg.model.image.input_width), lidar=cfg.model.lidar)
    written: list[Path] = []

    def on_cloud(cloud) -> None:
        token = str(header_ns(cloud))
        if token not in tokens:
            pipeline.sync.associate(header_ns(cloud))   # keep the sync state as the node has it
            return
        inputs = pipeline.assemble(cloud)
        gt = gts[int(token)]
        seen = gt.num_lidar_pts > 0
        groups = [(gt.boxes[seen], [n for n, s in zip(gt.names, seen) if s], False)]
        p = preds.get(token)
        if p is not None:
            conf = p.scores >= cfg.eval.picture_score_threshold
            groups.append((p.boxes[conf], [n for n, c in zip(p.names, conf) if c], True))
        tiles = []
        for cam, img in zip(pipeline.cameras, inputs.images):
            size = pipeline.calib.image_size(cam)
            if img is None or size is None:
                h, w = size or (cfg.synth.image_height, cfg.synth.image_width)
                tiles.append(np.zeros((h, w, 3), np.uint8))
                continue
            r = round(size[1] / img.shape[1])          # JPEGs may have been decoded reduced
            c = Camera(cam, img.shape[1], img.shape[0], reduce_intrinsics(pipeline.calib.intrinsics(cam), r),
                       pipeline.calib.lidar_to_camera(cam, inputs.lidar_frame))
            tiles.append(draw_camera(img, c, groups))
        path = out_dir / f"frame_{token}.png"
        save_png(path, compose(draw_bev(inputs.arrays.points, groups), tiles))
        written.append(path)

    feed_bag(bag, pipeline, on_cloud)
    return written


def run_eval(bag: Path, gt_json: Path, cfg: AqrConfig, checkpoint: str, mode: str, out_dir: Path,
             device: str = "cpu", quiet: bool = False) -> tuple[DetectionResult, dict]:
    """Predict (replay or offline), score, write the report; returns (result, report dict)."""
    t0 = time.monotonic()
    cfg = cfg.model_copy(update={"model": _model_config(checkpoint, cfg)})   # pictures read sweeps as the node
    if mode == "replay":
        preds = predict_replay(bag, cfg, checkpoint, device, log=not quiet)
    else:
        from aqr_perception.model.runtime import DetectorRuntime

        preds = predict_offline(bag, cfg, DetectorRuntime(checkpoint or None, cfg.model, device))
    result, ev = evaluate_drive(bag, gt_json, cfg, preds)
    seconds = time.monotonic() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"bag": str(bag), "mode": mode, "checkpoint": checkpoint or "bundled", "frames": ev.frames_total,
              "frames_with_output": len(ev.pred), "seconds": round(seconds, 1), **result.summary(),
              "per_class_tp": result.per_class_tp, "routing": routing_summary(ev.pred)}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    write_pr_curves(out_dir / "pr_curves.png", result)
    n = min(cfg.eval.pictures, len(ev.gt))
    tokens = sorted(ev.gt)[:: max(1, len(ev.gt) // max(1, n))][:n]
    pictures = frame_pictures(bag, gt_json, cfg, ev.pred, tokens, out_dir) if n else []
    md = [f"# Evaluation of {bag.name} ({mode})", "",
          f"{ev.frames_total} frames, {len(ev.pred)} with detector output, {seconds:.1f} s.", "",
          metrics_table({bag.name: result}), "", per_class_table(result), "",
          f"Routing (detections with score >= {ROUTING_SCORE}): " + json.dumps(report["routing"]), "",
          "![PR curves](pr_curves.png)", ""] + [f"![{p.stem}]({p.name})" for p in pictures]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    return result, report
