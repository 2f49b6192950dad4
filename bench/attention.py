"""AQR cross-attention: dense bias (reference) vs fused exact vs unbiased SDPA, side by side.

For each size (CMT: 8 heads, head dim 32, 900 queries, 32,400 BEV + 24,000 image keys;
and the tiny config) and each AQR mode, prints the median time of --runs calls, the
peak extra memory of each method (each measured in a fresh subprocess: on CPU the peak of
live tensor storage above the inputs, tracked op by op by torch's ``MemTracker``; on CUDA
``max_memory_allocated``) and the max abs error vs dense. Scratch memory a kernel
allocates and frees inside one op (e.g. SDPA's own workspace) is not seen on CPU: that
only lowers the SDPA baseline, so "fused above SDPA" errs high.

Targets (issue 4): global <= 1.1x unbiased SDPA time, local <= 1.3x; extra memory
<= 5 % of the dense bias; max abs error <= 1e-5 in fp32.

At a size whose bias is small enough (dense_flash.MAX_BIAS_ENTRIES: the tiny model), fused
inference hands the dense bias to the flash kernel; the segment route it replaced is timed
beside it. ``--train`` times forward + backward instead (gradients to q, k, v and the router
weights, as in training), for the fused route taken (on CPU: the segment route with its
own backward; on CUDA in local mode: dense_sdpa), dense_sdpa and the folded route (forced
here: the dense bias as SDPA's mask with gradients, and the window gather that CUDA took
before it) and the dense reference; the error column is then the max abs gradient error
vs dense.

    python bench/attention.py [--device cpu|cuda] [--runs 5] [--sizes cmt tiny] [--dtype float32] [--train]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

SIZES = {
    # name: (batch, heads, queries, head_dim, layout (bev_h, bev_w, views, img_h, img_w), windows)
    "cmt": (1, 8, 900, 32, (180, 180, 6, 40, 100), (15, 15)),
    "tiny": (1, 4, 200, 32, (64, 64, 6, 12, 22), (15, 15)),
}


def make_case(size: str, mode: str, device: str, dtype: torch.dtype, seed: int = 0):
    from aqr_perception.model.aqr import AqrBias, MemoryLayout, QueryProjection

    b, h, nq, d, lay_t, (bw, cw) = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    lay = MemoryLayout(*lay_t)
    proj = QueryProjection(torch.randint(0, lay.num_bev, (b, nq), generator=g),
                           torch.randint(0, lay.num_views, (b, nq), generator=g),
                           torch.randint(0, lay.img_h, (b, nq), generator=g),
                           torch.randint(0, lay.img_w, (b, nq), generator=g),
                           torch.rand(b, nq, generator=g) > 0.2)
    proj = QueryProjection(*(t.to(device) for t in (proj.bev_index, proj.cam_view, proj.cam_row, proj.cam_col,
                                                    proj.cam_visible)))
    aqr = AqrBias(mode, 5.0, torch.rand(b, nq, generator=g).to(device, dtype),
                  torch.rand(b, nq, generator=g).to(device, dtype), lay, proj, bw, cw)
    q = torch.randn(b, h, nq, d, generator=g).to(device, dtype)
    k = torch.randn(b, h, lay.num_keys, d, generator=g).to(device, dtype)
    v = torch.randn(b, h, lay.num_keys, d, generator=g).to(device, dtype)
    mask = torch.zeros(b, lay.num_keys, dtype=torch.bool, device=device)
    return q, k, v, mask, aqr


def run_method(method: str, q, k, v, mask, aqr):
    from torch.nn import functional as F

    from aqr_perception.model.attention import aqr_cross_attention
    from aqr_perception.model.fused_attention import forced_route

    if method == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if method in ("segment", "dense_sdpa", "folded"):   # fused routes that small inference or the CPU would skip
        with forced_route(method):
            return aqr_cross_attention(q, k, v, mask, aqr, impl="fused")
    return aqr_cross_attention(q, k, v, mask, aqr, impl=method)


def run_train_step(method: str, q, k, v, mask, aqr, grad_out) -> list:
    """Forward + backward; returns the gradients (q, k, v, lidar weight, camera weight)."""
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v, aqr.lidar_weight, aqr.camera_weight)]
    aqr.lidar_weight, aqr.camera_weight = leaves[3], leaves[4]
    out = run_method(method, *leaves[:3], mask, aqr)
    out.backward(grad_out)
    return [t.grad for t in leaves]


def cpu_tensor_peak(call, external: list[torch.Tensor]) -> tuple[object, int]:
    """Run ``call`` once under torch's MemTracker: (its result, peak bytes of live CPU tensor
    storage above what existed before, ``external`` being the tensors that did)."""
    from torch.distributed._tools import mem_tracker

    storages = mem_tracker.get_untyped_storages

    def with_sparse(t):   # MemTracker cannot see into the segment route's CSR tensors: count their parts
        if isinstance(t, torch.Tensor) and t.layout == torch.sparse_csr:
            return set().union(*(storages(x) for x in (t.crow_indices(), t.col_indices(), t.values())))
        return storages(t)

    mem_tracker.get_untyped_storages = with_sparse
    try:
        tracker = mem_tracker.MemTracker()
        tracker.track_external(*external)
        total = lambda kind: sum(v["Total"] for d, v in tracker.get_tracker_snapshot(kind).items()  # noqa: E731
                                 if str(d) == "cpu")
        with tracker:
            base = total("current")
            out = call()
        return out, total("peak") - base
    finally:
        mem_tracker.get_untyped_storages = storages


def measure_child(size: str, mode: str, method: str, device: str, dtype: str, runs: int, train: bool) -> dict:
    """In this (fresh) process: time and peak extra memory of one method."""
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    case = make_case(size, mode, device, dt)
    grad_out = torch.randn(case[0].shape, generator=torch.Generator().manual_seed(1)).to(device, dt)
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    if train:
        call = lambda: run_train_step(method, *case, grad_out)  # noqa: E731
    else:
        call = lambda: run_method(method, *case)  # noqa: E731
    q, k, v, mask, aqr = case
    with torch.inference_mode(not train):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = call()
            sync()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            inputs = [q, k, v, mask, grad_out] + [t for obj in (aqr, aqr.projection) for t in vars(obj).values()
                                                  if isinstance(t, torch.Tensor)]
            out, peak = cpu_tensor_peak(call, inputs)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - t0)
    out = torch.cat([t.float().cpu().reshape(-1) for t in out if t is not None]) if train else out.float().cpu()
    torch.save(out, f"/tmp/aqr_bench_{size}_{mode}_{method}_{int(train)}.pt")
    return {"time_s": statistics.median(times), "peak_extra_bytes": max(0, peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", nargs="*", default=["tiny", "cmt"])
    parser.add_argument("--modes", nargs="*", default=["global", "local"])
    parser.add_argument("--train", action="store_true", help="time forward + backward")
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "MODE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_child(*args.child, args.device, args.dtype, args.runs, args.train)))
        return
    what = "forward + backward" if args.train else "forward"
    print(f"device {args.device}, {args.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.runs}, {what}")
    from aqr_perception.model.dense_flash import MAX_BIAS_ENTRIES

    for size in args.sizes:
        b, h, nq, d, lay, _ = SIZES[size]
        nk = lay[0] * lay[1] + lay[2] * lay[3] * lay[4]
        dense_bias_bytes = b * h * nq * nk * 4
        for mode in args.modes:
            # CPU local-mode inference at a size whose bias the flash kernel is given: the
            # segment route beside it
            small = (not args.train and args.device == "cpu" and mode == "local"
                     and b * nq * nk <= MAX_BIAS_ENTRIES)
            methods = ("sdpa", "fused", "dense_sdpa", "folded", "dense") if args.train else (
                ("sdpa", "fused", "segment", "dense") if small else ("sdpa", "fused", "dense"))
            res, failed = {}, []
            for method in methods:
                out = subprocess.run([sys.executable, __file__, "--device", args.device, "--dtype", args.dtype,
                                      "--runs", str(args.runs), "--child", size, mode, method]
                                     + (["--train"] if args.train else []),
                                     capture_output=True, text=True, check=False)
                reason = None                # one method failing (out of memory, a kernel error) leaves the others
                if out.returncode != 0:
                    reason = f"exit code {out.returncode}:\n{out.stderr.strip()[-2000:]}"
                else:
                    try:
                        res[method] = json.loads(out.stdout.strip().splitlines()[-1])
                    except (IndexError, json.JSONDecodeError):
                        reason = f"no result line in its output: {out.stdout.strip()[-500:]!r}"
                if reason is not None:
                    failed.append(method)
                    print(f"{size} {mode} {method}: failed, {reason}", flush=True)
                    continue
                print(f"{size} {mode} {method}: {json.dumps(res[method])}", flush=True)
            load = lambda m, size=size, mode=mode: torch.load(  # noqa: E731
                f"/tmp/aqr_bench_{size}_{mode}_{m}_{int(args.train)}.pt")
            ref = load("dense") if "dense" in res else None
            err = {} if ref is None else {m: (load(m) - ref).abs().max().item() for m in res
                                          if m not in ("sdpa", "dense")}
            t = {m: r["time_s"] for m, r in res.items()}
            mem = {m: r["peak_extra_bytes"] / 2**20 for m, r in res.items()}
            print(f"\n{size} ({nq} queries x {nk} keys, {h} heads), {mode} mode, {what}; dense bias would be "
                  f"{dense_bias_bytes / 2**20:.0f} MiB")
            if failed:
                print(f"  failed: {', '.join(failed)}")
            if "sdpa" in t:
                print(f"  unbiased SDPA : {t['sdpa'] * 1e3:8.1f} ms  peak extra {mem['sdpa']:8.1f} MiB")
            fused = "fused exact (dense_flash)" if small else "fused exact  "
            for m, label in (("fused", fused), ("segment", "segment route"), ("dense_sdpa", "dense_sdpa   "),
                             ("folded", "folded route ")):
                if m in t:
                    vs = f"max |err| vs dense {err[m]:.2e}" if m in err else "no dense reference"
                    print(f"  {label}: {t[m] * 1e3:8.1f} ms  peak extra {mem[m]:8.1f} MiB  {vs}")
            if "dense" in t:
                print(f"  dense bias    : {t['dense'] * 1e3:8.1f} ms  peak extra {mem['dense']:8.1f} MiB")
            if not all(m in t for m in ("sdpa", "fused", "dense")):
                continue
            target = 1.1 if mode == "global" else 1.3
            if small:
                print("  (dense_flash holds the (B, 1, Q, K) bias shared by the heads: the memory target is for "
                      "CMT size, where the segment route holds none)")
            print(f"  fused / SDPA time {t['fused'] / t['sdpa']:.2f}x (target <= {target}x); dense / SDPA "
                  f"{t['dense'] / t['sdpa']:.2f}x; fused memory above SDPA {mem['fused'] - mem['sdpa']:.1f} MiB = "
                  f"{100 * (mem['fused'] - mem['sdpa']) * 2**20 / dense_bias_bytes:.1f} % of the dense bias "
                  f"(target <= 5 %)")


if __name__ == "__main__":
    main()
