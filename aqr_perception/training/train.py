"""``aqr-perception train``: the training loop (single process or torchrun DDP).

Per step: masked-modal augmentation, forward with DN queries, Hungarian matching, focal
+ L1 on every decoder layer (matching + DN), AdamW, gradient clipping, warmup + cosine
(or cyclic / constant) learning rate. Checkpoints (weights + model config + metrics +
optimizer for resume) after every epoch; a CSV log of every logged step. ``--time-budget``
sets the step count from the speed of the first steps, so one recipe fits an hour (or
any budget) on whatever machine runs it.

Scale-out: ``torchrun --nproc_per_node N -m aqr_perception.training.train ...`` runs
DistributedDataParallel (gloo on CPU, nccl on CUDA) with a DistributedSampler.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from aqr_perception.config import AqrConfig, config_to_dict, load_config
from aqr_perception.model.checkpoint import load_checkpoint, resolve_device, save_checkpoint
from aqr_perception.model.detector import CmtAqrDetector
from aqr_perception.model.losses import detection_loss
from aqr_perception.training.bev_augment import random_augment
from aqr_perception.training.dataset import DriveDataset, collate, drive_paths
from aqr_perception.training.masked_modal import masked_modal


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    # cyclic: one triangle up and down per quarter of training, decaying peaks
    cycle = (progress * 4) % 1.0
    return (1 - abs(2 * cycle - 1)) * (1 - 0.75 * progress) + 0.05


# A time budget fixes the step count once this many steps have been timed (after the first
# step, which pays for allocator and CUDA warm-up); with the usual warmup it is decided
# before the cosine part of the schedule starts.
BUDGET_TIMING_STEPS = 20


def steps_within_budget(total: int, done: int, seconds_per_step: float, seconds_left: float) -> int:
    """Step count that fits a time budget: the ``done`` steps plus as many as ``seconds_left``
    holds at ``seconds_per_step``, never more than ``total`` nor fewer than ``done``."""
    more = int(seconds_left / seconds_per_step) if seconds_per_step > 0 else total
    return max(done, min(total, done + more))


class TimeBudget:
    """Fits a run into ``seconds`` counted from ``start`` (a ``time.monotonic()`` reading).

    Steps ``first_step + 1 .. first_step + 1 + timing_steps`` are timed; at the end of that
    window the run's step count is set to what fits (:attr:`plan_step`), and once the
    budget is spent the run stops at the current step whatever the plan said.
    """

    def __init__(self, seconds: float, start: float, first_step: int, timing_steps: int) -> None:
        self.seconds, self.start, self.timing_steps = seconds, start, timing_steps
        self.timing_from = first_step + 1
        self.plan_step = self.timing_from + timing_steps
        self._t_timing: float | None = None

    def total_after(self, step: int, total: int) -> int:
        """The run's step count after ``step`` steps were done (``total``: the count so far)."""
        now = time.monotonic()
        if step == self.timing_from:
            self._t_timing = now
        elif step == self.plan_step and self._t_timing is not None:
            total = steps_within_budget(total, step, (now - self._t_timing) / self.timing_steps,
                                        self.seconds - (now - self.start))
        return step if now - self.start >= self.seconds else total


def _agree(value: int, world: int, device: torch.device) -> int:
    """The smallest of the ranks' values: under DDP every rank must stop at the same step."""
    if world == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _ddp() -> tuple[int, int]:
    """(rank, world size), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(cfg: AqrConfig, data_dir: Path, out_dir: Path, resume: Path | None = None, device_name: str = "auto",
          max_steps: int | None = None, progress: bool = True, time_budget_s: float | None = None,
          budget_timing_steps: int = BUDGET_TIMING_STEPS) -> dict:
    """Train; returns the final metrics dict (also stored in the checkpoints).

    ``time_budget_s`` (seconds from this call, data loading included): after
    ``budget_timing_steps`` timed steps the run's length is set to what fits the budget
    (the schedule is laid out over that length), and it stops at the budget in any case.
    """
    t_start = time.monotonic()
    rank, world = _ddp()
    tc = cfg.train
    torch.manual_seed(tc.seed + rank)
    device = resolve_device(device_name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    drives = drive_paths(data_dir)
    if not drives:
        raise FileNotFoundError(f"no drives (*.gt.json + bag folder) in {data_dir}")
    dataset = DriveDataset(drives, cfg)
    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=tc.seed) if world > 1 else None
    generator = torch.Generator().manual_seed(tc.seed)
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=collate, num_workers=tc.num_workers, generator=generator, drop_last=True)
    model = CmtAqrDetector(cfg.model).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                                  weight_decay=tc.weight_decay)
    start_epoch, step = 0, 0
    if resume is not None:
        loaded, blob = load_checkpoint(resume, device)
        model.load_state_dict(loaded.state_dict())
        if "optimizer" in blob:
            optimizer.load_state_dict(blob["optimizer"])
        start_epoch, step = blob["meta"].get("epoch", 0), blob["meta"].get("step", 0)
    net = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    total = min(max_steps or 10**12, tc.epochs * len(loader))
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.csv"
    log_file = open(log_path, "a", newline="") if rank == 0 else None
    writer = csv.writer(log_file) if log_file else None
    if writer and log_path.stat().st_size == 0:
        writer.writerow(["step", "epoch", "lr", "loss", "cls", "bbox", "dn_cls", "dn_bbox", "seconds"])
    aug_gen = torch.Generator().manual_seed(tc.seed + 1000 + rank)
    meta = {"config": config_to_dict(cfg), "data": str(data_dir), "drives": len(drives), "frames": len(dataset),
            "world_size": world, "time_budget_s": time_budget_s, "planned_steps": total}
    budget = None if time_budget_s is None else TimeBudget(time_budget_s, t_start, step, budget_timing_steps)
    t0 = time.monotonic()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc="train", unit="step")
    running = []
    try:
        for epoch in range(start_epoch, tc.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            model.train()
            for inputs, gt_boxes, gt_labels in loader:
                if step >= total:
                    break
                for g in optimizer.param_groups:
                    g["lr"] = tc.lr * lr_factor(step, total, tc.warmup_steps, tc.schedule)
                inputs, gt_boxes, gt_labels = random_augment(inputs, gt_boxes, gt_labels, tc.aug_rotation,
                                                             tc.aug_scale, tc.aug_flip_p,
                                                             cfg.model.point_cloud_range, aug_gen)
                inputs = masked_modal(inputs, tc.drop_images_p, tc.drop_lidar_p, aug_gen,
                                      tc.drop_view_p, tc.drop_intensity_p).to(device)
                gt_boxes = [b.to(device) for b in gt_boxes]
                gt_labels = [lab.to(device) for lab in gt_labels]
                losses = detection_loss(net(inputs, gt_boxes, gt_labels), gt_boxes, gt_labels, cfg.model)
                optimizer.zero_grad(set_to_none=True)
                losses.total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                step += 1
                running.append(float(losses.total.detach()))
                if budget is not None:
                    total = _agree(budget.total_after(step, total), world, device)   # ranks stop together
                    if step == budget.plan_step:
                        meta["planned_steps"] = total
                        if bar is not None:
                            bar.total = total
                            bar.refresh()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sum(running[-20:]) / len(running[-20:]):.3f}")
                if rank == 0 and tc.checkpoint_every and step % tc.checkpoint_every == 0:
                    meta.update(epoch=epoch, step=step, train_seconds=round(time.monotonic() - t0, 1),
                                loss_last_20=sum(running[-20:]) / len(running[-20:]))
                    save_checkpoint(out_dir / "last.pt", model, meta, optimizer.state_dict())
                if writer and (step % tc.log_every == 0 or step == total):
                    parts = losses.parts
                    pick = lambda key: sum(v for k, v in parts.items() if k.endswith("." + key))  # noqa: E731
                    writer.writerow([step, epoch, f"{optimizer.param_groups[0]['lr']:.3e}",
                                     f"{float(losses.total.detach()):.4f}", f"{pick('cls'):.4f}",
                                     f"{pick('bbox'):.4f}", f"{pick('dn_cls'):.4f}", f"{pick('dn_bbox'):.4f}",
                                     f"{time.monotonic() - t0:.1f}"])
                    log_file.flush()
            if rank == 0:
                meta.update(epoch=epoch + 1, step=step, train_seconds=round(time.monotonic() - t0, 1),
                            loss_last_20=sum(running[-20:]) / max(1, len(running[-20:])))
                save_checkpoint(out_dir / "last.pt", model, meta, optimizer.state_dict())
            if step >= total:
                break
    finally:
        if bar is not None:
            bar.close()
        if log_file:
            log_file.close()
    if rank == 0:
        save_checkpoint(out_dir / "final.pt", model, meta)
        (out_dir / "train_summary.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "config"},
                                                               indent=1))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aqr-perception train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config YAML or preset (default: tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", type=Path, required=True, help="folder of synthetic drives (aqr-perception synth)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default train.output_dir)")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint to resume from (last.pt)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                        help="fit the run into this many minutes (data loading included): the step count "
                             "(at most --max-steps / the epochs) is set from the speed of the first steps")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    try:
        meta = train(cfg, args.data, args.out or Path(cfg.train.output_dir), args.resume, args.device,
                     args.max_steps, progress=not args.quiet,
                     time_budget_s=None if args.time_budget is None else 60.0 * args.time_budget)
    except FileNotFoundError as exc:
        print(f"aqr-perception train: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {meta['step']} steps on {meta['frames']} frames in {meta['train_seconds']} s; "
              f"loss {meta['loss_last_20']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
