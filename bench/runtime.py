"""Eager torch against ``runtime: torch_bf16`` and ``onnxruntime``, side by side in one run:
latency and accuracy.

Latency: the median of ``predict`` (``DetectorRuntime.infer``, the node's call) on the
frames of the bundled drive, the runtimes taking turns frame by frame so that the
machine's drift hits both alike. Accuracy: the pooled NDS / mAP on the model card's six
held-out drives (seeds 1100-1105, 16 sweeps, clean; generated once under --data), and the
largest difference of the confident detections on the bundled drive, matched by centre.

    python bench/runtime.py [--data runs/bench/heldout] [--threads 2] [--drives 6] [--runtimes torch,torch_bf16]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/bench/heldout"))
    parser.add_argument("--drives", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the bundled drive for the latency")
    parser.add_argument("--runtimes", default="torch,torch_bf16,onnxruntime", help="compared with torch (eager)")
    args = parser.parse_args()

    import torch

    from aqr_perception.allocator import keep_freed_memory
    from aqr_perception.cli import DEFAULT_BAG
    from aqr_perception.config import load_config
    from aqr_perception.evaluation.answers import predict_offline
    from aqr_perception.evaluation.compare import match_detections
    from aqr_perception.evaluation.robustness import ensure_drives, evaluate_condition
    from aqr_perception.model.runtime import DetectorRuntime

    keep_freed_memory()                                  # as the node and the CLI do
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("tiny", ["synth.frames_per_drive=16"])
    names = ["torch"] + [n for n in args.runtimes.split(",") if n != "torch"]
    runtimes = {}
    for name in names:
        t0 = time.perf_counter()
        runtimes[name] = DetectorRuntime(None, None, "cpu", runtime=name)
        print(f"{name}: set-up {time.perf_counter() - t0:.1f} s" + "".join(f"; {w}" for w in runtimes[name].warnings))
    eager = runtimes["torch"]

    # latency: the model inputs of every frame of the bundled drive, runtimes taking turns
    recorder = Recorder(eager)
    answers = {"torch": predict_offline(DEFAULT_BAG, cfg, recorder)}
    arrays = recorder.arrays
    times = {name: [] for name in runtimes}
    for rt in runtimes.values():
        rt.infer(arrays[0])                                   # warm-up
    for _ in range(args.rounds):
        for a in arrays:
            for name, rt in runtimes.items():
                times[name].append(rt.infer(a).inference_ms)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"predict on the bundled drive ({len(arrays)} frames x {args.rounds}, {torch.get_num_threads()} threads): "
          + ", ".join(f"{k} {v:.1f} ms ({v / med['torch']:.2f}x)" for k, v in med.items()))

    # the same detections on the bundled drive: eager's confident boxes matched by centre
    for name, rt in runtimes.items():
        if name == "torch":
            continue
        answers[name] = predict_offline(DEFAULT_BAG, cfg, rt)
        print(f"bundled drive, {name} vs torch: " + match_detections(answers["torch"], answers[name]).summary())

    # NDS on the held-out drives
    pairs = ensure_drives(cfg, "clean", list(range(1100, 1100 + args.drives)), args.data)
    for name, rt in runtimes.items():
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
