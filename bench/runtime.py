"""Eager torch against ``runtime: onnxruntime``, side by side in one run: latency and accuracy.

Latency: the median of ``predict`` (``DetectorRuntime.infer``, the node's call) on the
frames of the bundled drive, the two runtimes taking turns frame by frame so that the
machine's drift hits both alike. Accuracy: the pooled NDS / mAP on the model card's six
held-out drives (seeds 1100-1105, 16 sweeps, clean; generated once under --data), and the
largest difference of the confident detections on the bundled drive.

    python bench/runtime.py [--data runs/bench/heldout] [--threads 2] [--drives 6]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/bench/heldout"))
    parser.add_argument("--drives", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the bundled drive for the latency")
    args = parser.parse_args()

    import torch

    from aqr_perception.allocator import keep_freed_memory
    from aqr_perception.cli import DEFAULT_BAG
    from aqr_perception.config import load_config
    from aqr_perception.evaluation.answers import predict_offline
    from aqr_perception.evaluation.robustness import ensure_drives, evaluate_condition
    from aqr_perception.model.runtime import DetectorRuntime

    keep_freed_memory()                                  # as the node and the CLI do
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("tiny", ["synth.frames_per_drive=16"])
    t0 = time.perf_counter()
    eager = DetectorRuntime(None, None, "cpu")
    ort = DetectorRuntime(None, None, "cpu", runtime="onnxruntime")
    print(f"onnxruntime set-up (export + session): {time.perf_counter() - t0:.1f} s")

    # latency: the model inputs of every frame of the bundled drive, runtimes alternating
    recorder = Recorder(eager)
    a = predict_offline(DEFAULT_BAG, cfg, recorder)
    arrays = recorder.arrays
    times = {"torch": [], "onnxruntime": []}
    for rt in (eager, ort):
        rt.infer(arrays[0])                                   # warm-up
    for _ in range(args.rounds):
        for a in arrays:
            for name, rt in (("torch", eager), ("onnxruntime", ort)):
                times[name].append(rt.infer(a).inference_ms)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"predict on the bundled drive ({len(arrays)} frames x {args.rounds}, {torch.get_num_threads()} threads): "
          f"torch {med['torch']:.1f} ms, onnxruntime {med['onnxruntime']:.1f} ms "
          f"-> {med['onnxruntime'] / med['torch']:.2f}x")

    # the same detections on the bundled drive
    b = predict_offline(DEFAULT_BAG, cfg, ort)
    worst_box = worst_score = 0.0
    for token in a:
        n = int((a[token].scores >= 0.05).sum())
        if n:
            worst_box = max(worst_box, float(np.abs(a[token].boxes[:n] - b[token].boxes[:n]).max()))
            worst_score = max(worst_score, float(np.abs(a[token].scores[:n] - b[token].scores[:n]).max()))
    print(f"bundled drive, detections scoring >= 0.05: largest box difference {worst_box:.2e}, "
          f"score difference {worst_score:.2e}")

    # NDS on the held-out drives
    pairs = ensure_drives(cfg, "clean", list(range(1100, 1100 + args.drives)), args.data)
    for name, rt in (("torch", eager), ("onnxruntime", ort)):
        res, _ = evaluate_condition(cfg, pairs, rt)
        print(f"held-out drives 1100-{1099 + args.drives} pooled, {name}: NDS {res.NDS:.4f}, mAP {res.mAP:.4f}")


class Recorder:
    """A runtime that keeps the model inputs the node's pipeline hands it."""

    def __init__(self, runtime) -> None:
        self.runtime, self.arrays = runtime, []

    def __getattr__(self, name: str):
        return getattr(self.runtime, name)

    def infer(self, arrays):
        self.arrays.append(arrays)
        return self.runtime.infer(arrays)


if __name__ == "__main__":
    main()
