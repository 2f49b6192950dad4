"""One epoch of training (DETR's ``engine.py``): the step, its logging and its checkpoints.

Per step: global BEV augmentation, masked-modal augmentation, forward with DN queries,
Hungarian matching and the losses of every decoder layer (model/losses.py), AdamW with
gradient clipping, the learning rate of the schedule. training/train.py sets a run up
and calls :func:`train_one_epoch` once per epoch.
"""
from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from aqr_perception.config import AqrConfig
from aqr_perception.model.checkpoint import save_checkpoint
from aqr_perception.model.detector import CmtAqrDetector, DetectorInputs
from aqr_perception.model.losses import LossBreakdown, detection_loss
from aqr_perception.training.bev_augment import random_augment
from aqr_perception.training.masked_modal import masked_modal
from aqr_perception.training.schedule import TimeBudget, lr_factor

#: the loss shown and stored is the mean of the last this many steps
LOSS_WINDOW = 20


class TrainLog:
    """``train_log.csv``: one row per logged step (appended to on resume)."""

    HEADER = ["step", "epoch", "lr", "loss", "cls", "bbox", "dn_cls", "dn_bbox", "seconds"]

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", newline="")  # noqa: SIM115 - closed by close()
        self._writer = csv.writer(self._file)
        if path.stat().st_size == 0:
            self._writer.writerow(self.HEADER)

    def row(self, step: int, epoch: int, lr: float, losses: LossBreakdown, seconds: float) -> None:
        parts = losses.parts
        pick = lambda key: sum(v for k, v in parts.items() if k.endswith("." + key))  # noqa: E731
        self._writer.writerow([step, epoch, f"{lr:.3e}", f"{float(losses.total.detach()):.4f}", f"{pick('cls'):.4f}",
                               f"{pick('bbox'):.4f}", f"{pick('dn_cls'):.4f}", f"{pick('dn_bbox'):.4f}",
                               f"{seconds:.1f}"])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class TrainRun:
    """What a run carries from step to step (built by training/train.py's ``setup``)."""

    cfg: AqrConfig
    model: CmtAqrDetector
    net: torch.nn.Module                 # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    device: torch.device
    out_dir: Path
    rank: int
    world: int
    step: int
    total: int                           # planned step count (a time budget may change it)
    meta: dict[str, Any]
    aug_gen: torch.Generator
    t0: float                            # time.monotonic() when training started
    budget: TimeBudget | None = None
    log: TrainLog | None = None          # rank 0 only
    bar: Any = None                      # tqdm progress bar, rank 0 only
    losses: list[float] = field(default_factory=list)

    def recent_loss(self) -> float:
        window = self.losses[-LOSS_WINDOW:]
        return sum(window) / max(1, len(window))


def agree(value: int, world: int, device: torch.device) -> int:
    """The smallest of the ranks' values: under DDP every rank must stop at the same step."""
    if world == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def train_step(run: TrainRun, inputs: DetectorInputs, gt_boxes: list[torch.Tensor],
               gt_labels: list[torch.Tensor]) -> LossBreakdown:
    """Augment, forward, losses, one optimizer step at the schedule's learning rate."""
    tc = run.cfg.train
    for g in run.optimizer.param_groups:
        g["lr"] = tc.lr * lr_factor(run.step, run.total, tc.warmup_steps, tc.schedule)
    inputs, gt_boxes, gt_labels = random_augment(inputs, gt_boxes, gt_labels, tc.aug_rotation, tc.aug_scale,
                                                 tc.aug_flip_p, run.cfg.model.point_cloud_range, run.aug_gen)
    inputs = masked_modal(inputs, tc.drop_images_p, tc.drop_lidar_p, run.aug_gen, tc.drop_view_p,
                          tc.drop_intensity_p).to(run.device)
    gt_boxes = [b.to(run.device) for b in gt_boxes]
    gt_labels = [lab.to(run.device) for lab in gt_labels]
    losses = detection_loss(run.net(inputs, gt_boxes, gt_labels), gt_boxes, gt_labels, run.cfg.model)
    run.optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    run.optimizer.step()
    run.step += 1
    run.losses.append(float(losses.total.detach()))
    return losses


def train_one_epoch(run: TrainRun, loader: DataLoader, epoch: int, max_batches: int | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> None:
    """Steps over ``loader`` until it ends, ``max_batches`` are done (the rest of an epoch a
    run resumed in), the run reaches its (budgeted) step count or ``should_stop()`` (checked
    between steps: a Ctrl-C); the every-N-steps checkpoint (``train.checkpoint_every``:
    ``epoch`` the one in progress) and log rows on the way."""
    tc = run.cfg.train
    run.model.train()
    for batch, (inputs, gt_boxes, gt_labels) in enumerate(loader):
        # under DDP every rank stops at the same step, when any has been asked (the largest flag)
        stop = -agree(-int(should_stop()), run.world, run.device) if run.world > 1 else should_stop()
        if run.step >= run.total or (max_batches is not None and batch >= max_batches) or stop:
            break
        losses = train_step(run, inputs, gt_boxes, gt_labels)
        if run.budget is not None:
            run.total = agree(run.budget.total_after(run.step, run.total), run.world, run.device)  # ranks stop together
            if run.step == run.budget.plan_step:
                run.meta["planned_steps"] = run.total
                if run.bar is not None:
                    run.bar.total = run.total
                    run.bar.refresh()
        if run.bar is not None:
            run.bar.update(1)
            run.bar.set_postfix(loss=f"{run.recent_loss():.3f}")
        if run.rank == 0 and tc.checkpoint_every and run.step % tc.checkpoint_every == 0:
            run.meta.update(epoch=epoch, step=run.step, train_seconds=round(time.monotonic() - run.t0, 1),
                            loss_last_20=run.recent_loss())
            save_checkpoint(run.out_dir / "last.pt", run.model, run.meta, run.optimizer.state_dict())
        if run.log is not None and (run.step % tc.log_every == 0 or run.step == run.total):
            run.log.row(run.step, epoch, run.optimizer.param_groups[0]["lr"], losses, time.monotonic() - run.t0)
