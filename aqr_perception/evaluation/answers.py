"""What the detector answered for each frame, as evaluation reads it (offline or replayed).

:class:`FrameAnswer` is the one per-frame record between the detector's output and the
metric: boxes in the LiDAR frame, class names, last-layer router weights and which
modalities the model had. :func:`predict_offline` runs the node's FramePipeline over a
bag in this process; :func:`answer_from_messages` reads what the node published
(evaluation/replay.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aqr_perception.config import AqrConfig, NodeConfig
from aqr_perception.data.bag_reader import feed_bag
from aqr_perception.frames.pipeline import FrameInputs, FrameOutcome, FramePipeline
from aqr_perception.stamps import header_ns


@dataclass
class FrameAnswer:
    """Detections of one frame in the LiDAR frame: boxes (N, 9), scores (N,), names;
    lidar_weight / camera_weight (N,) the last layer's router weights; whether the model
    had LiDAR / any camera (a missing modality's keys are all masked: its weight then
    changes nothing and says nothing)."""

    boxes: np.ndarray
    scores: np.ndarray
    names: list[str]
    lidar_weight: np.ndarray
    camera_weight: np.ndarray
    lidar_available: bool = True
    cameras_available: bool = True


def eval_node_config(cfg: AqrConfig) -> NodeConfig:
    """The node settings used for evaluation: every detection the metric may use."""
    return cfg.node.model_copy(update={
        "score_threshold": cfg.eval.score_threshold, "max_detections": cfg.eval.max_boxes_per_sample,
        "qos_reliability": "reliable"})


def answer_from_outcome(out: FrameOutcome, class_names: list[str]) -> FrameAnswer:
    """The answer of a frame the pipeline processed (``out.status == "ok"``)."""
    d, arrays = out.detections, out.inputs.arrays
    return FrameAnswer(d.boxes, d.scores, [class_names[int(i)] for i in d.labels],
                       d.lidar_weight[:, -1] if len(d) else np.zeros(0),
                       d.camera_weight[:, -1] if len(d) else np.zeros(0),
                       bool(arrays.lidar_valid), bool(arrays.camera_valid.any()))


def answer_from_messages(det, vel=None, routing=None) -> FrameAnswer:
    """The answer the node published: Detection3DArray (+ DetectionVelocityArray, QueryRouting
    of the same stamp, when received)."""
    from aqr_perception.ros.detection_msgs import from_detection_array

    seven, names, scores = from_detection_array(det)
    n = len(names)
    boxes = np.zeros((n, 9))
    boxes[:, :7] = seven
    if vel is not None:
        for i in range(n):
            v = vel.velocities[i].velocity
            boxes[i, 7:9] = [v.x, v.y]
    weights = (lambda key: np.array([getattr(r, key) for r in routing.detections])) if routing else \
        (lambda key: np.zeros(n))
    return FrameAnswer(boxes, scores, names, weights("lidar_weight"), weights("camera_weight"),
                       bool(routing.lidar_available) if routing else True,
                       bool(routing.cameras_available) if routing else True)


def predict_offline(bag: Path, cfg: AqrConfig, runtime, keep_inputs: set[str] | None = None,
                    inputs_out: dict[str, FrameInputs] | None = None) -> dict[str, FrameAnswer]:
    """Run the node's FramePipeline over the bag in this process: token (str(stamp_ns)) -> answer.
    The inputs of the frames in ``keep_inputs`` go to ``inputs_out``."""
    pipeline = FramePipeline(eval_node_config(cfg), runtime)
    names = list(runtime.cfg.classes)
    answers: dict[str, FrameAnswer] = {}

    def on_cloud(cloud) -> None:
        out = pipeline.process(cloud)
        token = str(header_ns(cloud))
        if out.status != "ok":
            return
        answers[token] = answer_from_outcome(out, names)
        if inputs_out is not None and keep_inputs is not None and token in keep_inputs:
            inputs_out[token] = out.inputs

    feed_bag(bag, pipeline, on_cloud)
    return answers
