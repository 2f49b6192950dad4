"""Per-stage latency of the detector's ``predict``, measured inside one run.

Times the whole ``predict`` and, through forward hooks, each stage inside it: image
backbone, image neck, LiDAR voxelization / pillar encoding, sparse middle encoder
(voxel models), SECOND + FPN + shared conv, decoder (AQR routers included) and task
heads; "rest" is what lies between them (position encodings, decoding). The cloud is
LiDAR-like, not random: a 32-beam scan of a ground plane, walls and a few boxes
(surfaces cluster points into voxels as real sweeps do), stacked over ``--sweeps``
sweeps with the ego moving 0.5 m per sweep and the time lag as the fifth column.
Untrained weights (speed does not depend on their values).

    python bench/model_stages.py --config config/cmt_aqr_vov_1600x640.yaml [--sweeps 10] [--runs 3]
    python bench/model_stages.py --config tiny --device cuda --dtype bf16

On CUDA, fp16/bf16 run under autocast (position encodings stay in fp32, as mmdet's
force_fp32 does: the projections are cast back).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

STAGES = {"image backbone": "img_backbone", "image neck": "img_neck", "LiDAR voxelize": "lidar.voxelizer",
          "LiDAR pillar net": "lidar.pfn", "LiDAR sparse encoder": "lidar.middle",
          "LiDAR SECOND": "lidar.backbone", "LiDAR FPN + shared conv": ("lidar.neck", "lidar.shared_conv"),
          "decoder": "decoder", "heads": "heads"}


def lidar_like_sweep(beams: int = 32, azimuths: int = 1080, height: float = 1.84, seed: int = 0) -> np.ndarray:
    """(N, 4) x, y, z, intensity of one scan: rays hit the nearest of ground, two walls
    along the street (+-12 m) and eight 4x2x1.6 m boxes; beyond 70 m nothing returns."""
    rng = np.random.default_rng(seed)
    elev = np.deg2rad(np.linspace(-30.0, 10.0, beams))
    az = np.linspace(-math.pi, math.pi, azimuths, endpoint=False)
    e, a = np.meshgrid(elev, az, indexing="ij")
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
    o = np.array([0.0, 0.0, height])
    t = np.full(d.shape[0], 70.0)
    down = d[:, 2] < -1e-6
    t[down] = np.minimum(t[down], -o[2] / d[down, 2])
    for y in (-12.0, 12.0):
        hit = np.abs(d[:, 1]) > 1e-6
        tw = (y - o[1]) / np.where(hit, d[:, 1], 1.0)
        ok = hit & (tw > 0)
        t[ok] = np.minimum(t[ok], tw[ok])
    centres = rng.uniform([-40, -9, 0], [40, 9, 0], size=(8, 3))
    for c in centres:
        lo, hi = c + np.array([-2.0, -1.0, 0.0]), c + np.array([2.0, 1.0, 1.6])
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - o) / d, (hi - o) / d
        tmin = np.nanmax(np.minimum(t1, t2), axis=1)
        tmax = np.nanmin(np.maximum(t1, t2), axis=1)
        ok = (tmax >= tmin) & (tmin > 0)
        t[ok] = np.minimum(t[ok], tmin[ok])
    keep = t < 70.0
    pts = o + d[keep] * t[keep, None] + rng.normal(0, 0.02, size=(int(keep.sum()), 3))
    return np.concatenate([pts - [0, 0, height], rng.uniform(0, 255, size=(pts.shape[0], 1))], 1).astype(np.float32)


def stacked_sweeps(n: int) -> np.ndarray:
    """(N, 5) ``n`` sweeps, current first, each 0.5 m further back with its time lag."""
    out = []
    for k in range(n):
        s = lidar_like_sweep(seed=k)
        s[:, 0] -= 0.5 * k
        out.append(np.concatenate([s, np.full((s.shape[0], 1), 0.05 * k, np.float32)], 1))
    return np.concatenate(out)


def model_arrays(cfg, sweeps: int):
    """One sample of model inputs (numpy): the LiDAR-like cloud, random images, the rig's lidar2img."""
    from aqr_perception.data.rig import nuscenes_like_rig, resize_intrinsics
    from aqr_perception.frames.preprocess import ModelArrays

    points = stacked_sweeps(sweeps)
    h, w = cfg.image.input_height, cfg.image.input_width
    l2i = []
    for cam in nuscenes_like_rig()[: cfg.num_views]:
        k4 = np.eye(4)
        k4[:3, :3] = resize_intrinsics(cam.K, w / 1600, w / 1600)   # width-scaled, top rows cropped
        k4[1, 2] -= 900 * w / 1600 - h
        l2i.append(k4 @ cam.lidar_to_camera)
    images = np.random.default_rng(0).integers(0, 255, size=(cfg.num_views, 3, h, w), dtype=np.uint8)
    return ModelArrays(points, images, np.stack(l2i).astype(np.float32), np.ones(cfg.num_views, bool), True)


def autocast_for(device: str, dtype: str):
    """Autocast context for "bf16" / "fp16" (a disabled one for "fp32")."""
    if dtype == "fp32":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters ('' for an empty one)."""
    return (str(exc).strip().splitlines() or [""])[0][:limit]


def write_json(path: Path, obj) -> None:
    """``obj`` as JSON at ``path``, written to a temporary file and renamed over it: a run
    killed mid-write (a device call's time limit) leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def device_sync(device: str):
    """What waits for the device's queued work before a clock is read (nothing on the CPU)."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def time_stages(model, inputs, runs: int, device: str, dtype: str, predict=None, stages: bool = True,
                warmup: int = 1) -> tuple[list[float], dict[str, float]]:
    """Seconds of each of ``runs`` predicts (after ``warmup`` untimed ones) and the median ms
    per stage. ``predict`` replaces ``model.predict`` (a runtime's forward, say). Stages are
    timed by hooks on ``model``'s modules (on CUDA each hook synchronises: the totals of such
    a run include those waits); ``stages=False`` times the whole call only, as a compiled
    callable needs (dynamo would trace the hooks into its graph: graph breaks and recompiles)."""
    spent: dict[str, list[float]] = defaultdict(list)
    sync = device_sync(device)
    hooks = []
    for label, names in STAGES.items() if stages else ():
        for name in (names if isinstance(names, tuple) else (names,)):
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                continue

            def pre(_m, _i, label=label):
                sync()
                spent[label + "#t0"] = [time.perf_counter()]

            def post(_m, _i, _o, label=label):
                sync()
                spent[label + "#acc"].append(time.perf_counter() - spent[label + "#t0"][0])
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    predict = predict or model.predict
    totals, per_stage = [], defaultdict(list)
    try:
        for run in range(runs + warmup):                # the first ``warmup`` runs are not timed
            for k in [k for k in spent if k.endswith("#acc")]:
                spent[k] = []
            sync()
            t0 = time.perf_counter()
            with torch.inference_mode(), autocast_for(device, dtype):
                predict(inputs)
            sync()
            if run < warmup:
                continue
            totals.append(time.perf_counter() - t0)
            for label in STAGES:
                per_stage[label].append(sum(spent.get(label + "#acc", [])))
    finally:
        for h in hooks:
            h.remove()
    return totals, {k: 1e3 * statistics.median(v) for k, v in per_stage.items() if any(v)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/cmt_aqr_vov_1600x640.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sweeps", type=int, default=None, help="default: the config's lidar.sweeps")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()

    from aqr_perception.allocator import keep_freed_memory
    from aqr_perception.config import load_config
    from aqr_perception.model import build_detector
    from aqr_perception.model.batching import make_inputs

    keep_freed_memory()                                  # as the node and the CLI do

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides).model
    model = build_detector(cfg).eval().to(args.device)
    sweeps = args.sweeps or cfg.lidar.sweeps
    sample = model_arrays(cfg, sweeps)
    inputs = make_inputs([sample], args.device)
    totals, med = time_stages(model, inputs, args.runs, args.device, args.dtype)
    voxels = None
    if cfg.lidar.encoder == "voxel":
        voxels = int(model.lidar.voxelizer([inputs.points[0]]).coords.shape[0])
    total = 1e3 * statistics.median(totals)
    h, w = cfg.image.input_height, cfg.image.input_width
    print(f"{cfg.name} on {args.device} ({args.dtype}, {torch.get_num_threads()} threads): {cfg.num_views} views "
          f"{w}x{h}, {sample.points.shape[0]} points from {sweeps} sweep(s)"
          + (f" -> {voxels} voxels" if voxels else ""))
    print(f"{'stage':28s} {'ms':>10s} {'share':>7s}")
    for label, ms in med.items():
        print(f"{label:28s} {ms:10.1f} {ms / total:7.1%}")
    rest = total - sum(med.values())
    print(f"{'rest (PE, decode)':28s} {rest:10.1f} {rest / total:7.1%}")
    print(f"{'predict':28s} {total:10.1f}   ({1e3 / total:.2f} FPS, median of {args.runs})")


if __name__ == "__main__":
    main()
