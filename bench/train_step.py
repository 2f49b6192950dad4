"""One training step of the vehicle model, the fused AQR attention against the dense reference.

Issue 24: local-mode training on CUDA took the fused attention's folded route (its window
gather once ran per sample: 0.38 s against 0.14 s for dense per batch-4 step on an H100);
it now takes dense_sdpa (model/dense_sdpa.py), the dense bias as SDPA's mask.
This times training/engine.py's ``train_step`` itself (the copy to the device, the
forward in training mode with the denoising queries, ``detection_loss``, the backward,
gradient clipping and one AdamW step) with the augmentations and modality drops turned off
(random, and not what is compared: a dropped LiDAR changes a step's cost), on a batch of
LiDAR-like clouds (bench/model_stages.py's) with random images and ten random GT boxes per
sample. The two attentions start from the same weights and take turns step
by step, so that the machine's drift hits both alike; reported: the median step time and
the peak memory of each (CUDA), the fused attention's routes (calls per route in its first
step: what its time measures), and the two first-step losses (the same seed for both:
equal but for dropout, whose masks the two routes draw differently). The JSON is rewritten
after every step (a run stopped by the device call's limit keeps what it measured), and an
attention that runs out of GPU memory is reported as such while the other goes on.

    python bench/train_step.py --device cuda [--config config/cmt_aqr_r50_800x320.yaml] [--batch 4]
    python bench/train_step.py --tiny --device cpu        (a CPU check: tiny config, batch 1)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_stages import device_sync, first_line, model_arrays, write_json  # noqa: E402

#: GT boxes per sample, inside the inner half of the range (the assigner sees real matches)
GT_PER_SAMPLE = 10
#: training's random augmentations and modality drops, off (train_step then draws nothing for them)
NO_AUGMENTATION = ["train.aug_rotation=0.0", "train.aug_scale=[1.0,1.0]", "train.aug_flip_p=0.0",
                   "train.drop_images_p=0.0", "train.drop_lidar_p=0.0", "train.drop_view_p=0.0",
                   "train.drop_intensity_p=0.0"]


def random_targets(cfg, batch: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(batch) x (GT_PER_SAMPLE, 9) boxes ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` and labels."""
    g = torch.Generator().manual_seed(seed)
    r = cfg.point_cloud_range
    boxes, labels = [], []
    for _ in range(batch):
        n = GT_PER_SAMPLE
        xy = (torch.rand(n, 2, generator=g) - 0.5) * torch.tensor([r[3] - r[0], r[4] - r[1]]) * 0.5
        z = torch.rand(n, 1, generator=g) - 1.0
        size = torch.rand(n, 3, generator=g) * torch.tensor([4.0, 2.0, 1.5]) + 0.5
        yaw = (torch.rand(n, 1, generator=g) - 0.5) * 2 * np.pi
        vel = torch.randn(n, 2, generator=g)
        boxes.append(torch.cat([xy, z, size, yaw, vel], 1))
        labels.append(torch.randint(0, len(cfg.classes), (n,), generator=g))
    return boxes, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/cmt_aqr_r50_800x320.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--mode", choices=["local", "global"], default="local", help="the AQR bias mode trained")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each attention (after one warm-up)")
    parser.add_argument("--tiny", action="store_true", help="tiny config, batch 1, one timed step (a CPU check)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from aqr_perception.config import load_config
    from aqr_perception.model import build_detector
    from aqr_perception.model.batching import make_inputs
    from aqr_perception.model.fused_attention import observed_routes
    from aqr_perception.training.engine import TrainRun, train_step

    config, batch, steps = ("tiny", 1, 1) if args.tiny else (args.config, args.batch, args.steps)
    base = load_config(config, args.overrides + [f"model.aqr.mode={args.mode}", *NO_AUGMENTATION])
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = device_sync(args.device)
    runs = {}
    for attention in ("fused", "dense"):
        torch.manual_seed(0)                       # the attention has no parameters: the same weights
        model = build_detector(base.model.model_copy(update={"attention": attention})).to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=base.train.lr,
                                weight_decay=base.train.weight_decay)
        run = TrainRun(base, model, model, opt, device, Path("."), rank=0, world=1, step=0, total=steps + 1, meta={},
                       aug_gen=torch.Generator(), t0=time.monotonic())
        runs[attention] = {"run": run, "times": [], "losses": []}
    del model, opt, run                            # runs[...] holds them: an entry dropped after an OOM frees its model
    same = all(torch.equal(a, b) for a, b in zip(runs["fused"]["run"].model.state_dict().values(),
                                                 runs["dense"]["run"].model.state_dict().values()))
    assert same, "the two models must start from the same weights"
    sample = model_arrays(base.model, base.model.lidar.sweeps)
    inputs = make_inputs([sample] * batch)         # on the CPU, as the loader gives them: train_step moves them
    gt_boxes, gt_labels = random_targets(base.model, batch)

    def step(entry: dict, seed: int) -> float:
        torch.manual_seed(seed)                    # the same DN noise for both attentions
        # the cross-attention routes of its first step
        with observed_routes() if "routes" not in entry else nullcontext({}) as routes:
            sync()
            t0 = time.perf_counter()
            losses = train_step(entry["run"], inputs, gt_boxes, gt_labels)
            sync()
        entry.setdefault("routes", dict(routes))
        entry["losses"].append(float(losses.total.detach()))
        return time.perf_counter() - t0

    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"bench/train_step.py on {name}: {base.model.name}, AQR {args.mode} mode, batch {batch}, "
          f"{steps} timed steps each (+1 warm-up), torch {torch.__version__}", flush=True)

    def summary() -> dict:
        rows = {}
        for attention, entry in runs.items():
            row = {"steps_timed": len(entry["times"])}
            if entry["times"]:
                row["step_s"] = round(statistics.median(entry["times"]), 4)
            if entry["losses"]:
                row["first_loss"] = round(entry["losses"][0], 5)
            if "peak_mib" in entry:
                row["peak_mib"] = round(entry["peak_mib"], 1)
            if entry.get("routes"):
                row["fused_routes"] = entry["routes"]
            if "error" in entry:
                row["error"] = entry["error"]
                row["out_of_memory"] = entry.get("out_of_memory", False)
            rows[attention] = row
        out = {"device": name, "config": base.model.name, "mode": args.mode, "batch": batch, "steps": steps,
               "rows": rows}
        if all("step_s" in r and "error" not in r for r in rows.values()):    # the same steps timed for both
            out["fused_over_dense"] = round(rows["fused"]["step_s"] / rows["dense"]["step_s"], 3)
        return out

    def save() -> None:
        if args.json:
            write_json(args.json, summary())

    def drop(attention: str, entry: dict, i: int) -> None:
        """After a failed step: say why and free the run (its model, gradients and optimizer
        state: room for the other attention); a CUDA context the failure spoiled ends the other's steps too."""
        print(f"  {attention}: {entry['error']}", flush=True)
        del entry["run"]
        if not cuda:
            return
        try:
            torch.cuda.empty_cache()
        except Exception as exc:                   # noqa: BLE001  (a kernel error spoils the context for the rest)
            for other in runs.values():
                other.setdefault("error", f"the CUDA context is unusable after step {i}: "
                                          f"{type(exc).__name__}: {first_line(exc)}")

    save()                                         # a JSON exists however far the steps get
    try:
        for i in range(steps + 1):                 # taking turns; step 0 is the warm-up
            for attention, entry in runs.items():
                if "error" in entry:
                    continue
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    t = step(entry, seed=i)
                except torch.OutOfMemoryError as exc:
                    entry["error"], entry["out_of_memory"] = f"out of GPU memory at step {i}: {first_line(exc)}", True
                except Exception as exc:           # noqa: BLE001  (a kernel error: the other attention still runs)
                    entry["error"] = f"step {i} failed: {type(exc).__name__}: {first_line(exc)}"
                    entry["out_of_memory"] = "out of memory" in str(exc)      # cuBLAS / cuDNN allocations
                if "error" in entry:               # outside the except: its traceback holds the step's tensors
                    drop(attention, entry, i)
                    continue
                if i > 0:
                    entry["times"].append(t)
                if cuda:
                    entry["peak_mib"] = max(entry.get("peak_mib", 0.0),
                                            torch.cuda.max_memory_allocated(device) / 2**20)
            save()
    finally:
        save()
    result = summary()
    for attention, row in result["rows"].items():
        if "step_s" not in row:
            print(f"  {attention:5s}: no timed step ({row.get('error', 'none ran')})")
            continue
        mem = f", peak {row['peak_mib']:.0f} MiB" if "peak_mib" in row else ""
        taken = f", routes {row['fused_routes']}" if "fused_routes" in row else ""
        print(f"  {attention:5s}: {row['step_s']:.3f} s per step{mem}, first loss {row['first_loss']:.5f}{taken}",
              flush=True)
    if "fused_over_dense" in result:
        print(f"  fused / dense step time {result['fused_over_dense']:.2f}x (target <= 1.0x on CUDA)")
    return 0 if "fused_over_dense" in result else 1


if __name__ == "__main__":
    sys.exit(main())
