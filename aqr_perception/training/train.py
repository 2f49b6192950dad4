"""``aqr-perception train`` (DETR's ``main.py``): set a run up, train epoch by epoch, checkpoint.

The step and the epoch are training/engine.py's: masked-modal augmentation, forward with
DN queries, Hungarian matching, focal + L1 on every decoder layer (matching + DN), AdamW,
gradient clipping, warmup + cosine (or cyclic / constant) learning rate
(training/schedule.py). Checkpoints (weights + model config + metrics + optimizer for
resume) after every epoch; a CSV log of every logged step. ``--time-budget`` sets the
step count from the speed of the first steps, so one recipe fits an hour (or any budget)
on whatever machine runs it.

Scale-out: ``torchrun --nproc_per_node N -m aqr_perception.training.train ...`` runs
DistributedDataParallel (gloo on CPU, nccl on CUDA) with a DistributedSampler.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from aqr_perception.config import (
    AqrConfig,
    ConfigError,
    config_to_dict,
    load_config,
    node_config_from_param_file,
    one_line,
    output_folder,
)
from aqr_perception.data.bag_reader import check_bag_topics, drive_pairs
from aqr_perception.model.checkpoint import CheckpointError, load_checkpoint, resolve_device, save_checkpoint
from aqr_perception.model.detector import CmtAqrDetector
from aqr_perception.stop_signals import STOP_SIGNALS, StopSignals
from aqr_perception.training.cbgs import CbgsDataset
from aqr_perception.training.dataset import DriveDataset, collate
from aqr_perception.training.engine import TrainLog, TrainRun, agree, train_one_epoch
from aqr_perception.training.schedule import BUDGET_TIMING_STEPS, TimeBudget


def _ddp(device: torch.device) -> tuple[int, int]:
    """(rank, world size), initialising the process group under torchrun (nccl for a CUDA
    run, gloo on the CPU, whatever else the machine has)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _workers_ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C / SIGTERM to the main process (a terminal or systemd
    signals the whole group): it ends the step, saves, and stops them itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def setup(cfg: AqrConfig, data_dir: Path, out_dir: Path, resume: Path | None, device_name: str,
          max_steps: int | None, progress: bool, time_budget_s: float | None, budget_timing_steps: int,
          t_start: float, init: Path | None = None) -> tuple[TrainRun, DataLoader, DistributedSampler | None, int]:
    """Data, model, optimizer (resumed from ``resume``), the planned step count and the
    run's log: (run, loader, sampler under DDP, first epoch)."""
    device = resolve_device(device_name)
    rank, world = _ddp(device)
    tc = cfg.train
    if tc.drop_intensity_p > 0 and cfg.model.lidar.intensity_required:
        # a model that learns to do without intensity says so in its checkpoint (the node then
        # gives it sweeps without intensity instead of masking them)
        lidar = cfg.model.lidar.model_copy(update={"intensity_required": False})
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"lidar": lidar})})
    torch.manual_seed(tc.seed + rank)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    output_folder(out_dir)
    drives = drive_pairs([data_dir])
    for bag, _ in drives:           # before any decoding: a bag recorded under other topic names
        check_bag_topics(bag, cfg.node)
    frames = DriveDataset(drives, cfg)
    found = (f"{data_dir}: {len(frames)} annotated frames in {len(drives)} drive(s) ({frames.unannotated_frames} "
             "sweeps without ground truth at their stamp)")
    if not len(frames):
        raise ConfigError(f"{found}: nothing to train on")
    dataset = CbgsDataset(frames, tc.seed) if tc.cbgs else frames
    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=tc.seed) if world > 1 else None
    generator = torch.Generator().manual_seed(tc.seed)
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=collate, num_workers=tc.num_workers, generator=generator, drop_last=True,
                        worker_init_fn=_workers_ignore_stop_signals)
    if len(loader) == 0:     # drop_last: no batch at all, and a "trained" untrained model
        raise ConfigError(f"{found}: not one batch of train.batch_size={tc.batch_size} per process "
                          f"({world} process(es))")
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
        generator.manual_seed(tc.seed + start_epoch)       # not epoch 0's order again
    elif init is not None:
        start_from(model, init, device)
    net = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    total = min(max_steps or 10**12, tc.epochs * len(loader))
    meta = {"config": config_to_dict(cfg), "data": str(data_dir), "drives": len(drives), "frames": len(frames.samples),
            "samples_per_epoch": len(dataset),
            "world_size": world, "time_budget_s": time_budget_s, "planned_steps": total,
            # what a checkpoint records, from the start: a resumed run that trains no step still has it
            "epoch": start_epoch, "step": step, "train_seconds": 0.0, "loss_last_20": float("nan")}
    budget = None if time_budget_s is None else TimeBudget(time_budget_s, t_start, step, budget_timing_steps)
    run = TrainRun(cfg, model, net, optimizer, device, out_dir, rank, world, step, total, meta,
                   aug_gen=torch.Generator().manual_seed(tc.seed + 1000 + rank), t0=time.monotonic(), budget=budget,
                   log=TrainLog(out_dir / "train_log.csv") if rank == 0 else None)
    if progress and rank == 0:
        from tqdm import tqdm

        run.bar = tqdm(total=total, initial=step, desc="train", unit="step")
    return run, loader, sampler, start_epoch


def save_progress(run: TrainRun, epoch: int) -> None:
    """``last.pt`` at the end of an epoch (weights, meta and optimizer: what a resume needs)."""
    run.meta.update(epoch=epoch, step=run.step, train_seconds=round(time.monotonic() - run.t0, 1),
                    loss_last_20=run.recent_loss())
    save_checkpoint(run.out_dir / "last.pt", run.model, run.meta, run.optimizer.state_dict())


def start_from(model: CmtAqrDetector, init: Path, device: torch.device) -> None:
    """Fine-tuning: ``model`` takes the weights of checkpoint ``init`` (an imported CMT
    model, say), which must be of the same architecture; epoch, step and optimizer start anew."""
    loaded, _ = load_checkpoint(init, device)
    theirs, ours = loaded.state_dict(), model.state_dict()
    differ = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    extra = [k for k in theirs if k not in ours]
    if differ or extra:
        raise CheckpointError(f"--init {init}: its model ({loaded.cfg.name}) is not the config's ({model.cfg.name}): "
                              f"{len(differ)} weights missing or of another shape, {len(extra)} unexpected "
                              f"(e.g. {(differ or extra)[0]})")
    model.load_state_dict(theirs)


class TrainingStopped(Exception):
    """A run stopped by a signal after its step ``step``, resumable from ``checkpoint``;
    ``exit_code``: 128 + the signal's number, as a shell reports it."""

    def __init__(self, step: int, checkpoint: Path, exit_code: int) -> None:
        super().__init__(f"stopped at step {step}: {checkpoint} holds it (--resume {checkpoint} goes on)")
        self.step, self.checkpoint, self.exit_code = step, checkpoint, exit_code


def train(cfg: AqrConfig, data_dir: Path, out_dir: Path, resume: Path | None = None, device_name: str = "auto",
          max_steps: int | None = None, progress: bool = True, time_budget_s: float | None = None,
          budget_timing_steps: int = BUDGET_TIMING_STEPS, init: Path | None = None) -> dict:
    """Train; returns the final metrics dict (also stored in the checkpoints).

    ``time_budget_s`` (seconds from this call, data loading included): after
    ``budget_timing_steps`` timed steps the run's length is set to what fits the budget
    (the schedule is laid out over that length), and it stops at the budget in any case.
    """
    t_start = time.monotonic()
    run, loader, sampler, start_epoch = setup(cfg, data_dir, out_dir, resume, device_name, max_steps, progress,
                                              time_budget_s, budget_timing_steps, t_start, init)
    # Ctrl-C / SIGTERM: the step in progress ends, last.pt is saved, the run stops (a second
    # Ctrl-C stops at once, saving nothing)
    stopped = False
    with StopSignals(second_raises=True) as stop:
        try:
            for epoch in range(start_epoch, cfg.train.epochs):
                if sampler is not None:
                    sampler.set_epoch(epoch)
                # a run resumed from a mid-epoch checkpoint trains only the rest of that epoch
                done = max(0, run.step - epoch * len(loader)) if epoch == start_epoch else 0
                train_one_epoch(run, loader, epoch, max_batches=len(loader) - done, should_stop=stop.is_set)
                # every rank stops here when any was signalled (a signal can reach them at different steps)
                stopped = bool(-agree(-int(stop.is_set()), run.world, run.device))
                if run.rank == 0:   # an epoch cut short (max steps, time budget, a stop) is resumed where it stopped
                    save_progress(run, epoch + 1 if run.step >= (epoch + 1) * len(loader) else epoch)
                if run.step >= run.total or stopped:
                    break
        finally:
            if run.bar is not None:
                run.bar.close()
            if run.log is not None:
                run.log.close()
    if stopped and run.step < run.total:      # (a signal during the last save: the run is complete)
        if run.world > 1:
            dist.barrier()                     # rank 0's last.pt is written before any rank exits
            dist.destroy_process_group()
        raise TrainingStopped(run.step, out_dir / "last.pt", 128 + (stop.signum or 2))
    if run.rank == 0:
        save_checkpoint(out_dir / "final.pt", run.model, run.meta)
        (out_dir / "train_summary.json").write_text(json.dumps({k: v for k, v in run.meta.items() if k != "config"},
                                                               indent=1))
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run.meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aqr-perception train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config YAML or preset (default: tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", type=Path, required=True,
                        help="a folder of drives (aqr-perception synth, nuscenes2bag) or one drive: a bag folder "
                             "or .mcap file with <bag>.gt.json beside it")
    parser.add_argument("--node-params", default=None, metavar="PARAMS_YAML",
                        help="the node's ROS parameter file: the bags' topic names, frames and cameras as the node "
                             "would read them (as eval --node-params)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default train.output_dir)")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint to resume from (last.pt)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this checkpoint's weights (fine-tuning, e.g. an import-cmt model); "
                             "epoch, step and optimizer start anew")
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
    try:
        cfg = load_config(args.config, args.overrides)
        if args.node_params:
            cfg = cfg.model_copy(update={"node": node_config_from_param_file(args.node_params)})
        meta = train(cfg, args.data, args.out or Path(cfg.train.output_dir), args.resume, args.device,
                     args.max_steps, progress=not args.quiet,
                     time_budget_s=None if args.time_budget is None else 60.0 * args.time_budget, init=args.init)
    except (FileNotFoundError, ConfigError) as exc:
        print(f"aqr-perception train: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"aqr-perception train: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:           # a second Ctrl-C, or one during the data loading
        print("aqr-perception train: interrupted", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {meta['step']} steps on {meta['frames']} frames in {meta['train_seconds']} s; "
              f"loss {meta['loss_last_20']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
