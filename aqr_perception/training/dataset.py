"""Training data: drive bags -> (model arrays, GT) samples, read the way the node reads them.

Frames come from :func:`aqr_perception.data.bag_reader.read_frames` (the node's sync,
conversion and preprocessing); GT from the drive's ``.gt.json``. GT boxes without any
LiDAR point (fully occluded) and outside the point-cloud range are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from aqr_perception.config import AqrConfig
from aqr_perception.data.bag_reader import read_frames
from aqr_perception.data.ground_truth import GtFrame, read_ground_truth
from aqr_perception.frames.model_frame import to_model_frame, turn_boxes
from aqr_perception.frames.preprocess import ModelArrays
from aqr_perception.model.batching import make_inputs
from aqr_perception.model.detector import DetectorInputs


@dataclass
class Sample:
    """One training sample: model arrays + GT boxes (N, 9) and labels (N,) in the LiDAR frame."""

    arrays: ModelArrays
    boxes: np.ndarray
    labels: np.ndarray
    stamp_ns: int


def select_gt(gt: GtFrame, pc_range: list[float], yaw_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """GT boxes seen by the LiDAR and inside the range, in the model's frame (the LiDAR frame
    turned by ``yaw_deg``, ``node.lidar_to_model_yaw_deg``, as the node turns its input)."""
    r = np.asarray(pc_range)
    boxes = turn_boxes(gt.lidar_boxes, yaw_deg) if yaw_deg else gt.lidar_boxes
    inside = np.all((boxes[:, :3] >= r[:3]) & (boxes[:, :3] <= r[3:]), axis=1)
    keep = inside & (gt.num_lidar_pts > 0)
    return boxes[keep], gt.labels[keep]


class DriveDataset(Dataset):
    """The annotated frames of the given drives, decoded once and kept in memory (uint8 images).

    Synthetic drives annotate every sweep; converted nuScenes scenes only the 2 Hz key
    frames: the sweeps between are read (they are the key frames' past sweeps) but are no
    samples (``unannotated_frames`` counts them)."""

    def __init__(self, drives: list[tuple[Path, Path]], cfg: AqrConfig) -> None:
        self.cfg = cfg
        self.samples: list[Sample] = []
        self.unannotated_frames = 0
        # every drive's ground truth first: one that cannot be used stops before any decoding
        truths = [(bag, read_ground_truth(gt_json, list(cfg.model.classes))) for bag, gt_json in drives]
        for bag, gts in truths:
            for frame in read_frames(bag, cfg):
                if frame.stamp_ns not in gts:
                    self.unannotated_frames += 1
                    continue
                yaw = cfg.node.lidar_to_model_yaw_deg     # trained in the frame the node will run it in
                boxes, labels = select_gt(gts[frame.stamp_ns], cfg.model.point_cloud_range, yaw)
                self.samples.append(Sample(to_model_frame(frame.arrays, yaw), boxes, labels, frame.stamp_ns))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def collate(samples: list[Sample]) -> tuple[DetectorInputs, list[torch.Tensor], list[torch.Tensor]]:
    """Batch for the detector + per-sample GT tensors."""
    return (make_inputs([s.arrays for s in samples]),
            [torch.from_numpy(s.boxes).float() for s in samples],
            [torch.from_numpy(s.labels).long() for s in samples])
