"""The vehicle models on a GPU, one prepared run: latency per stage, per precision, compiled or not.

For each config (default: the R50 800x320 vehicle model and the published VoV 1600x640 one)
and each precision (fp32, bf16, fp16 autocast; the position encodings stay in fp32, as
mmdet's ``force_fp32`` keeps them), it reports p50 / p99 latency and FPS of

* the model alone (the forward and the node's decode, one copy to the host: ``node_predict``;
  timed without hooks), with its stages (image backbone,
  LiDAR, decoder, ...; from a separate short run whose hooks synchronise at every stage);
* pre-processing: 6 camera images at 1600x900 resized and cropped to the model input with
  lidar2img folded in, the cloud to the model's points, and the copy to the device
  (``frames.preprocess.build_model_arrays`` + ``make_inputs``, what the node does);
* post-processing: decoded detections to the serialised output messages (Detection3DArray,
  velocities, routing), as the node publishes them (data/detection_cdr.py);
* the node path: the three together;
* on CUDA, per config, the host syncs of one eager fp32 ``node_predict``: how many, and the
  source lines that make them (each stalls the host until the GPU catches up);
* camera input from JPEG (six ~200 kB 1600x900 images, nuScenes' size): decoded on the
  CPU as the node does (reduced DCT decode, the camera thread pool) against a batch decoded
  on the GPU by nvJPEG (``torchvision.io.decode_jpeg``) and resized there; the node has no
  GPU decoding yet, so this row says whether it should (measured last: a CUDA error there
  would spoil the rows after it);

then the same with ``torch.compile`` (``mode="reduce-overhead"``: CUDA graphs) of the
dense part (everything after the BEV canvas), and TensorRT through ONNX when
``tensorrt`` or onnxruntime's TensorRT provider is installed (reported as missing
otherwise). The run keeps to ``--budget-s`` (default 420 s; bench/gpu_run.sh gives it 320 s
of a 400 s step) and lists what it skipped. It imports no ROS package (the GPU machine has none):
bench/gpu_run.sh is the whole device command, with the wheels it carries. ``--tiny`` runs
the tiny config, two runs each, for a CPU check (``test/test_bench_gpu.py``).

    python bench/model_gpu.py --device cuda [--json runs/bench/gpu.json]
    python bench/model_gpu.py --tiny --device cpu --dtypes fp32 bf16
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camera_images import TYPICAL_NOISE, gradient_images  # noqa: E402
from model_stages import device_sync, first_line, model_arrays, time_stages, write_json  # noqa: E402

CONFIGS = ["config/cmt_aqr_r50_800x320.yaml", "config/cmt_aqr_vov_1600x640.yaml"]
#: a torch.compile row is started only with this much of the budget left (compiling the
#: dense part took about a minute on the CPU; a row cut off by the device call's limit is lost),
#: and after the first compiled row, with COMPILE_MARGIN times that row's time left
COMPILE_MIN_LEFT_S = 150.0
COMPILE_MARGIN = 1.3
#: untimed calls before a compiled row is timed: compiling, then CUDA graph trees warm up
#: and record (mode="reduce-overhead"), which would otherwise land in the timed runs' p99
COMPILE_WARMUP = 3
#: runs of the hooked pass that gives an eager row its stages (its totals come from a pass
#: without hooks: on CUDA each hook synchronises, which the model alone does not)
STAGE_RUNS = 5
#: the host syncs of a config name the source lines that synchronise most, this many
SYNC_SITES = 15
#: a TensorRT precision is started only with this much of the budget left (its engine build)
TENSORRT_BUILD_S = 120.0
#: the pre- and post-processing of a row that does not time them (the TensorRT rows)
NOT_TIMED = {"p50_ms": None, "p99_ms": None, "fps": None}


class Report:
    """The rows so far, printed as they come and rewritten to ``--json`` after each one, so
    that a run stopped from outside (the device call's time limit) keeps what it measured."""

    HEADER = (f"{'config':24s} {'dtype':5s} {'variant':14s} {'model p50/p99 ms':>18s} {'FPS':>7s} "
              f"{'pre p50':>8s} {'post p50':>9s} {'node p50/p99 ms':>17s} {'node FPS':>9s}")

    def __init__(self, device_name: str, json_path: Path | None, settings: dict | None = None) -> None:
        self.device_name, self.json_path = device_name, json_path
        self.settings = settings or {}
        self.rows: list[dict] = []
        self.jpeg: list[dict] = []
        self.skipped: list[str] = []
        self.host_syncs: dict[str, dict] = {}

    def add(self, r: dict) -> None:
        if not self.rows:
            print(self.HEADER)
        self.rows.append(r)
        m, n = r["model"], r["node_path"]
        pre, post = r["pre"]["p50_ms"], r["post"]["p50_ms"]
        print(f"{r['config']:24s} {r['dtype']:5s} {r['variant']:14s} {m['p50_ms']:8.1f} / {m['p99_ms']:7.1f} "
              f"{m['fps']:7.2f} {'-' if pre is None else f'{pre:.1f}':>8s} "
              f"{'-' if post is None else f'{post:.2f}':>9s} "
              f"{n['p50_ms']:8.1f} / {n['p99_ms']:6.1f} {n['fps']:9.2f}", flush=True)
        if r["stages_ms"]:
            print("    stages: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items()), flush=True)
        self.save()

    def add_host_syncs(self, config: str, syncs: dict) -> None:
        self.host_syncs[config] = syncs
        print(f"{config}: {syncs['count']} host syncs in one eager fp32 predict ("
              + ", ".join(f"{k} x{v}" for k, v in syncs["sites"].items()) + ")", flush=True)
        self.save()

    def add_jpeg(self, rows: list[dict]) -> None:
        for j in rows:
            self.jpeg.append(j)
            extra = f", mean |GPU - CPU| {j['mean_abs_diff_vs_cpu']} grey levels" if "mean_abs_diff_vs_cpu" in j else ""
            print(f"{j['what']}: p50 {j['p50_ms']:.1f} / p99 {j['p99_ms']:.1f} ms{extra}", flush=True)
        self.save()

    def save(self) -> None:
        """Written whole and renamed over the old file: a run killed mid-write keeps the last one."""
        if self.json_path:
            write_json(self.json_path, {"device": self.device_name, "settings": self.settings, "rows": self.rows,
                                        "jpeg": self.jpeg, "host_syncs": self.host_syncs,
                                        "skipped": self.skipped})


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1e3 * s for s in seconds)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    p50 = statistics.median(ms)
    return {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "fps": round(1e3 / p50, 2)}


def camera_frames(n: int = 6) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Six 1600x900 RGB images with the rig's intrinsics and extrinsics."""
    from aqr_perception.data.rig import nuscenes_like_rig

    rig = nuscenes_like_rig(1600, 900)[:n]
    rng = np.random.default_rng(0)
    return ([rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8) for _ in rig], [c.K for c in rig],
            [c.lidar_to_camera for c in rig])


def typical_jpegs(n: int = 6) -> list[bytes]:
    """``n`` 1600x900 JPEGs (quality 85) of bench/node_io.py's typical content, ~200 kB each."""
    import cv2

    return [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
            for img in gradient_images(np.random.default_rng(0), TYPICAL_NOISE, n)]


def jpeg_rows(cfg, device: str, runs: int, sync, skipped: list[str]) -> list[dict]:
    """Six JPEGs to the model's image tensor on ``device``: the node's CPU decoding against
    nvJPEG (CUDA only). The lidar2img matrices are the same arithmetic either way (not timed)."""
    from types import SimpleNamespace

    from aqr_perception.frames.conversions import compressed_to_rgb_reduced, jpeg_reduction
    from aqr_perception.frames.preprocess import camera_pool, prepare_camera, resize_crop_matrix

    data = typical_jpegs(cfg.num_views)
    kb = statistics.mean(len(d) for d in data) / 1e3
    hw = (cfg.image.input_height, cfg.image.input_width)
    eye = np.eye(4)
    r = jpeg_reduction((900, 1600), hw)
    msgs = [SimpleNamespace(format="jpeg", data=d) for d in data]

    def cpu() -> torch.Tensor:
        def one(m):
            return prepare_camera(compressed_to_rgb_reduced(m, r)[0], eye[:3, :3], eye, hw)[0]
        return torch.from_numpy(np.stack(list(camera_pool().map(one, msgs)))).to(device).float()

    rows = [{"what": f"6 JPEGs ({kb:.0f} kB) -> model images, CPU (node: 1/{r} DCT decode, thread pool)",
             "device": device, **percentiles(timed(cpu, runs, sync))}]
    if not device.startswith("cuda"):
        skipped.append("JPEG on the GPU (nvJPEG): needs CUDA")
        return rows
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:                          # noqa: BLE001  (a torchvision that does not load)
        skipped.append(f"JPEG on the GPU (nvJPEG): torchvision: {type(exc).__name__}: {exc}"[:200])
        return rows
    (nh, nw), cx, cy = resize_crop_matrix((900, 1600), hw)
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]

    def gpu() -> torch.Tensor:
        imgs = torch.stack(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)).float()   # (V, 3, 900, 1600)
        imgs = torch.nn.functional.interpolate(imgs, size=(nh, nw), mode="bilinear", antialias=True,
                                               align_corners=False)
        return imgs[:, :, cy:cy + hw[0], cx:cx + hw[1]].round().clamp(0, 255)

    try:
        diff = (gpu() - cpu()).abs().mean().item()
        rows.append({"what": f"6 JPEGs ({kb:.0f} kB) -> model images, GPU (nvJPEG batch, antialiased resize)",
                     "device": device, "mean_abs_diff_vs_cpu": round(diff, 3), **percentiles(timed(gpu, runs, sync))})
    except Exception as exc:                          # noqa: BLE001  (report and go on: the run must finish)
        skipped.append(f"JPEG on the GPU (nvJPEG): {type(exc).__name__}: {first_line(exc)}")
    return rows


def host_syncs(fn, device: str, debug_mode=None) -> dict | None:
    """The synchronising CUDA calls of one ``fn()``: their count and the source lines
    (``package/file.py:line``, the innermost frame outside torch) that made most.
    ``torch.cuda.set_sync_debug_mode("warn")`` warns at each. ``debug_mode``: the (get, set)
    pair of that mode (torch.cuda's by default). None off CUDA."""
    if not device.startswith("cuda"):
        return None
    get_mode, set_mode = debug_mode or (torch.cuda.get_sync_debug_mode, torch.cuda.set_sync_debug_mode)
    torch_dir = str(Path(torch.__file__).parent)
    sites: Counter = Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchronizing" not in str(message):
            return
        for frame in reversed(traceback.extract_stack()[:-1]):    # past warnings.py and torch's wrappers
            if not frame.filename.startswith(torch_dir) and Path(frame.filename).name != "warnings.py":
                break
        sites["/".join(Path(frame.filename).parts[-2:]) + f":{frame.lineno}"] += 1

    previous = get_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        set_mode("warn")
        try:
            fn()
        finally:
            set_mode(previous)
    return {"count": sum(sites.values()), "sites": dict(sites.most_common(SYNC_SITES))}


def timed(fn, runs: int, sync) -> list[float]:
    fn()
    out = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def bench_config(path: str, device: str, dtypes: list[str], runs: int, compile_: bool, tensorrt: bool,
                 deadline: float, report: Report, overrides: list[str]) -> None:
    from types import SimpleNamespace

    from aqr_perception.config import load_config
    from aqr_perception.data.detection_cdr import detection_array_cdr, routing_cdr, velocity_cdr
    from aqr_perception.frames.preprocess import build_model_arrays
    from aqr_perception.model import build_detector
    from aqr_perception.model.batching import make_inputs

    skipped = report.skipped
    cfg = load_config(path, overrides).model
    try:
        model = build_detector(cfg).eval().to(device)
    except ImportError as exc:                       # a voxel model without spconv
        skipped.append(f"{cfg.name}: {exc}")
        return
    sync = device_sync(device)
    sample = model_arrays(cfg, cfg.lidar.sweeps)
    inputs = make_inputs([sample], device)
    images, Ks, exts = camera_frames(cfg.num_views)
    hw = (cfg.image.input_height, cfg.image.input_width)
    pre = timed(lambda: make_inputs([build_model_arrays(sample.points, images, Ks, exts, hw)], device), runs, sync)

    predict = partial(node_predict, model)
    with torch.inference_mode():
        det = predict(inputs).frames[0]
    header = SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=0), frame_id="LIDAR_TOP")   # std_msgs/Header's fields

    def post() -> None:
        detection_array_cdr(header, det, list(cfg.classes))
        velocity_cdr(header, det)
        routing_cdr(header, det, True, [f"CAM_{i}" for i in range(cfg.num_views)], [])

    post_t = timed(post, runs, sync)
    try:
        with torch.inference_mode():
            syncs = host_syncs(partial(predict, inputs), device)
        if syncs is not None:
            report.add_host_syncs(cfg.name, syncs)
    except Exception as exc:                         # evidence, not a row: never worth the run
        skipped.append(f"{cfg.name} host syncs: {type(exc).__name__}: {first_line(exc)}")
    variants = [(dt, None) for dt in dtypes]
    if compile_:
        variants += [(dt, "torch.compile") for dt in dtypes]
    compile_need_s, compile_failed = COMPILE_MIN_LEFT_S, None
    for dtype, how in variants:
        label = f"{cfg.name} {dtype}" + (f" {how}" if how else "")
        left = deadline - time.monotonic()
        if left <= 0 or (how == "torch.compile" and left < compile_need_s):
            skipped.append(f"{label}: over the time budget ({max(left, 0):.0f} s left"
                           + (f", a compiled row needs {compile_need_s:.0f} s)" if how else ")"))
            continue
        if how == "torch.compile" and compile_failed:
            skipped.append(f"{label}: not tried, compiling failed for {compile_failed}")
            continue
        if dtype == "fp16" and device == "cpu":
            skipped.append(f"{label}: fp16 autocast is for CUDA")
            continue
        t_row = time.monotonic()
        try:
            if how == "torch.compile":
                totals, stages = time_stages(model, inputs, runs, device, dtype, compiled_predict(model),
                                             stages=False, warmup=COMPILE_WARMUP)
                compile_need_s = max(compile_need_s, COMPILE_MARGIN * (time.monotonic() - t_row))
            else:
                totals, _ = time_stages(model, inputs, runs, device, dtype, predict, stages=False)
                _, stages = time_stages(model, inputs, min(runs, STAGE_RUNS), device, dtype, predict)
        except Exception as exc:                     # report and go on: the run must finish
            skipped.append(f"{label}: {type(exc).__name__}: {first_line(exc)}")
            if how == "torch.compile":
                compile_failed = dtype
            continue
        model_p = percentiles(totals)
        node = [a + b + c for a, b, c in zip(pre, totals, post_t)]
        row = {"config": cfg.name, "dtype": dtype, "variant": how or "eager", "device": device,
               "model": model_p, "stages_ms": {k: round(v, 2) for k, v in stages.items()},
               "pre": percentiles(pre), "post": percentiles(post_t), "node_path": percentiles(node)}
        if how == "torch.compile":
            row["note"] = ("the position encodings computed in every call: the eager rows reuse them from frame "
                           "to frame (positional.InferenceCache, off while compiling), as the node does")
        report.add(row)
    if tensorrt:
        for row in tensorrt_rows(cfg, model, inputs, runs, device, deadline, skipped):
            report.add(row)
    del model, predict
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def node_predict(model, inputs):
    """``model.predict`` with the node's decode (``DetectorRuntime.infer``'s: one copy to the host)."""
    from aqr_perception.model.host_decode import decode_to_host

    return decode_to_host(model(inputs), model.cfg.decode)


def compiled_predict(model):
    """``predict`` with the dense part (image branch, BEV convolutions, encodings, decoder,
    heads) under ``torch.compile(mode="reduce-overhead")``; the canvas and decoding eager."""
    from aqr_perception.model.host_decode import decode_to_host
    from aqr_perception.model.onnx_runtime import DenseDetector

    dense = torch.compile(DenseDetector(model), mode="reduce-overhead", dynamic=False)

    def predict(inputs):
        from aqr_perception.model.detector import DetectorOutput

        canvas = model.lidar.canvas(inputs.points)
        img2lidar = torch.linalg.inv(inputs.lidar2img.float())
        cls_logits, code, lw, cw = dense(canvas, inputs.images, inputs.lidar2img, img2lidar, inputs.camera_valid,
                                         inputs.lidar_valid)
        out = DetectorOutput(cls_logits[None], code[None], lw, cw, model.reference_points.weight[None],
                             inputs.lidar_valid | inputs.camera_valid.any(dim=1))
        return decode_to_host(out, model.cfg.decode)
    return predict


def tensorrt_rows(cfg, model, inputs, runs, device, deadline, skipped) -> list[dict]:
    """onnxruntime's TensorRT provider (or plain TensorRT) on the exported dense part, when installed."""
    try:
        import onnxruntime
        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    if "TensorrtExecutionProvider" not in providers:
        skipped.append(f"{cfg.name} TensorRT: not installed (onnxruntime-gpu with TensorrtExecutionProvider, "
                       f"or tensorrt; providers here: {', '.join(providers) or 'none'})")
        return []
    if time.monotonic() > deadline:
        skipped.append(f"{cfg.name} TensorRT: over the time budget")
        return []
    import tempfile

    from aqr_perception.model.onnx_runtime import DenseDetector

    cpu_model = model.to("cpu")
    with torch.no_grad():
        canvas = cpu_model.lidar.canvas([p.cpu() for p in inputs.points])
    l2i = inputs.lidar2img.float().cpu()
    feeds = (canvas, inputs.images.float().cpu(), l2i, torch.linalg.inv(l2i), inputs.camera_valid.cpu(),
             inputs.lidar_valid.cpu())
    names = ["canvas", "images", "lidar2img", "img2lidar", "camera_valid", "lidar_valid"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.onnx"
        try:
            with torch.no_grad():
                torch.onnx.export(DenseDetector(cpu_model).eval(), feeds, str(path), dynamo=True, input_names=names)
            for precision in ("fp32", "fp16"):
                if time.monotonic() > deadline - TENSORRT_BUILD_S:       # an engine build takes minutes
                    skipped.append(f"{cfg.name} TensorRT {precision}: over the time budget")
                    break
                trt = {"trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": False}
                sess = onnxruntime.InferenceSession(str(path), providers=[("TensorrtExecutionProvider", trt),
                                                                           "CUDAExecutionProvider"])
                if sess.get_providers()[0] != "TensorrtExecutionProvider":      # onnxruntime fell back silently
                    skipped.append(f"{cfg.name} TensorRT {precision}: the session runs on {sess.get_providers()[0]}")
                    continue
                np_feeds = {n: t.numpy() for n, t in zip(names, feeds)}
                totals = timed(lambda s=sess, f=np_feeds: s.run(None, f), runs, lambda: None)
                rows.append({"config": cfg.name, "dtype": precision, "variant": "TensorRT (ORT)", "device": device,
                             "model": percentiles(totals), "stages_ms": {}, "pre": dict(NOT_TIMED),
                             "post": dict(NOT_TIMED), "node_path": percentiles(totals),
                             "note": "dense part only (canvas and decoding excluded), host copies included; "
                                     "nodes TensorRT does not take run on onnxruntime's CUDA provider"})
        except Exception as exc:
            skipped.append(f"{cfg.name} TensorRT: {type(exc).__name__}: {first_line(exc)}")
    model.to(device)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--no-tensorrt", action="store_true")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--tiny", action="store_true", help="the tiny config, 2 runs (a CPU check of the script)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    from aqr_perception.config import load_config

    configs, runs = (["tiny"], 2) if args.tiny else (args.configs, args.runs)
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    settings = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    report = Report(name, args.json, settings)
    print(f"bench/model_gpu.py on {name} ({args.device}), torch {torch.__version__}, {runs} runs per row; "
          f"TF32 matmul {settings['tf32_matmul']}, convolutions {settings['tf32_cudnn']}", flush=True)
    report.save()                                    # a JSON exists however far the run gets
    sync = device_sync(args.device)
    try:
        for path in configs:
            try:      # one config failing (a CUDA error in its first predict, say) leaves the others their rows
                bench_config(path, args.device, args.dtypes, runs, not (args.no_compile or args.tiny),
                             not args.no_tensorrt, deadline, report, args.overrides)
            except Exception as exc:                 # noqa: BLE001
                report.skipped.append(f"{path}: {type(exc).__name__}: {first_line(exc)}")
        # last: a sticky CUDA error in nvJPEG would spoil every row measured after it
        try:
            report.add_jpeg(jpeg_rows(load_config(configs[0], args.overrides).model, args.device, runs, sync,
                                      report.skipped))
        except Exception as exc:                     # noqa: BLE001
            report.skipped.append(f"JPEG rows: {type(exc).__name__}: {first_line(exc)}")
    finally:
        for s in report.skipped:
            print(f"skipped: {s}")
        print(f"total {time.monotonic() - t0:.0f} s (budget {args.budget_s:.0f} s)")
        report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
