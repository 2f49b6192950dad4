"""The GPU run prepared for a lent device (bench/gpu_run.sh, bench/model_gpu.py) runs end
to end on the CPU at tiny size, so that the first task with a GPU finds it working; and it
runs where no ROS is installed, as on the GPU machine: the ROS packages are made
unimportable for it here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: what the GPU machine lacks and cannot be carried there (compiled for this Python, or ROS itself)
ROS_PACKAGES = ("rclpy", "rmw", "rosidl_parser", "rosidl_runtime_py", "rpyutils", "builtin_interfaces",
                "std_msgs", "geometry_msgs", "sensor_msgs", "vision_msgs", "visualization_msgs",
                "diagnostic_msgs", "tf2_msgs", "rosgraph_msgs", "rosbags", "aqr_perception.msg")

NO_ROS = f'''
import sys
BLOCKED = {ROS_PACKAGES!r}

def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)

class NoRos:
    """Import hook: the ROS packages are missing, as on the GPU machine."""
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: no ROS on the GPU machine)", name=name)
        return None

for _name in [m for m in sys.modules if _blocked(m)]:
    del sys.modules[_name]
sys.meta_path.insert(0, NoRos())
'''


@pytest.fixture
def model_gpu(monkeypatch):
    """bench/model_gpu.py as a module: bench/ on sys.path (model_gpu puts it there too) and
    its helpers imported under their own names, both for this test only."""
    modules = ("model_gpu", "model_stages", "camera_images")
    monkeypatch.setattr(sys, "path", [str(REPO / "bench"), *sys.path])
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import model_gpu

    for name in modules:
        sys.modules.pop(name, None)
    return model_gpu


def _no_ros_env(tmp_path: Path) -> dict:
    site = tmp_path / "no_ros"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_ROS)
    env = dict(os.environ, PYTHONPATH=str(site), PYTHON=sys.executable, OUT=str(tmp_path / "out"))
    return env


def test_the_blocker_hides_ros(tmp_path):
    env = _no_ros_env(tmp_path)
    for module in ("std_msgs.msg", "vision_msgs.msg", "rclpy", "aqr_perception.msg"):
        r = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode != 0 and "blocked: no ROS" in r.stderr, module
    r = subprocess.run([sys.executable, "-c", "import aqr_perception.data.detection_cdr, torch"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_gpu_run_checks_out_at_tiny_size_on_the_cpu_without_ros(tmp_path):
    env = _no_ros_env(tmp_path)
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_run.sh"), "--check"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "gpu.json").read_text())
    rows = {(row["config"], row["dtype"], row["variant"]): row for row in report["rows"]}
    assert set(rows) == {("cmt_aqr_tiny", "fp32", "eager")}
    for row in rows.values():
        for part in ("model", "pre", "post", "node_path"):
            assert 0 < row[part]["p50_ms"] <= row[part]["p99_ms"]
        assert row["node_path"]["p50_ms"] >= row["model"]["p50_ms"]
        assert {"image backbone", "decoder", "LiDAR voxelize"} <= set(row["stages_ms"])
    (jpeg,) = report["jpeg"]
    assert "CPU" in jpeg["what"] and 0 < jpeg["p50_ms"] <= jpeg["p99_ms"]
    assert any("JPEG on the GPU" in s and "needs CUDA" in s for s in report["skipped"])
    assert any("TensorRT" in s for s in report["skipped"])
    log = (out / "model_gpu.log").read_text()
    assert "cmt_aqr_tiny" in log and "node p50/p99" in log and "6 JPEGs" in log
    # the training step, fused against dense, from the same weights and the same DN noise
    train = json.loads((out / "train_step.json").read_text())
    assert train["config"] == "cmt_aqr_tiny" and train["mode"] == "local"
    fused, dense = train["rows"]["fused"], train["rows"]["dense"]
    assert fused["step_s"] > 0 and dense["step_s"] > 0
    assert fused["fused_routes"] == {"segment": 3} and "fused_routes" not in dense    # CPU training: 3 layers
    assert abs(fused["first_loss"] - dense["first_loss"]) <= 1e-3 * abs(dense["first_loss"])   # no dropout in tiny


def test_model_gpu_reports_every_precision_it_can_run_here(tmp_path):
    """bf16 runs on the CPU; fp16 autocast is CUDA's and is reported as skipped."""
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "model_gpu.py"), "--tiny", "--device", "cpu",
                        "--dtypes", "bf16", "fp16", "--no-tensorrt", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["dtype"], row["variant"]) for row in report["rows"]] == [("bf16", "eager")]
    assert any("fp16 autocast is for CUDA" in s for s in report["skipped"])


def test_model_gpu_keeps_to_its_budget_and_still_writes_its_report(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "model_gpu.py"), "--tiny", "--device", "cpu",
                        "--dtypes", "fp32", "bf16", "--budget-s", "0", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["rows"] == [] and len(report["jpeg"]) == 1
    assert sum("over the time budget" in s for s in report["skipped"]) == 2


@pytest.mark.parametrize("failure", ["out of memory", "kernel error"])
def test_train_step_reports_an_attention_that_fails_and_times_the_other(tmp_path, monkeypatch, failure):
    """On the GPU the dense reference may not fit at batch 4, or a kernel may fail: that
    attention is reported with the reason, the fused one is still timed, and the JSON says so."""
    import gc
    import importlib.util
    import weakref

    import torch

    from aqr_perception.model import fused_attention
    from aqr_perception.training import engine

    real = engine.train_step
    dense_model, freed_before_next_fused_step = [], []

    def dense_runs_out(run, *args, **kwargs):
        if run.model.cfg.attention == "dense":
            dense_model.append(weakref.ref(run.model))
            if failure == "out of memory":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.69 GiB")
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if dense_model:                                    # the steps after the OOM: its model is gone
            gc.collect()
            freed_before_next_fused_step.append(dense_model[0]() is None)
        return real(run, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", dense_runs_out)
    monkeypatch.setattr(sys, "path", list(sys.path))       # the bench puts bench/ first: undone after
    for name in ("model_stages", "camera_images"):         # and imports its helpers by these names
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.spec_from_file_location("train_step_bench", REPO / "bench" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    out = tmp_path / "train_step.json"
    with torch.random.fork_rng():                          # it seeds torch's global generator
        spec.loader.exec_module(bench)
        assert bench.main(["--tiny", "--device", "cpu", "--json", str(out)]) == 1  # no ratio to give
    for name in ("model_stages", "camera_images"):
        sys.modules.pop(name, None)
    assert freed_before_next_fused_step == [True]
    assert fused_attention._observers == []                 # its route counters are closed
    rows = json.loads(out.read_text())["rows"]
    assert rows["fused"]["step_s"] > 0 and rows["fused"]["steps_timed"] == 1 and "error" not in rows["fused"]
    assert rows["fused"]["fused_routes"] == {"segment": 3}
    assert rows["dense"]["steps_timed"] == 0
    assert rows["dense"]["out_of_memory"] is (failure == "out of memory")     # gpu_run.sh reruns at batch 2 on it
    assert rows["dense"]["error"].startswith("out of GPU memory at step 0" if failure == "out of memory" else
                                             "step 0 failed: RuntimeError: CUDA error: an illegal memory access")


def test_model_gpu_goes_on_after_a_config_or_the_jpeg_rows_fail(tmp_path, monkeypatch, model_gpu):
    """A config whose run raises (a CUDA error in its first predict, say) and JPEG rows that
    raise are reported as skipped with the reason; the other config keeps its rows and the
    JSON is written."""
    real, calls = model_gpu.bench_config, []

    def first_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(*args, **kwargs)

    def jpeg_fails(*args, **kwargs):
        raise RuntimeError("nvJPEG: decode failed")

    monkeypatch.setattr(model_gpu, "bench_config", first_fails)
    monkeypatch.setattr(model_gpu, "jpeg_rows", jpeg_fails)
    out = tmp_path / "gpu.json"
    assert model_gpu.main(["--configs", "tiny", "tiny", "--device", "cpu", "--dtypes", "fp32", "--runs", "2",
                           "--no-compile", "--no-tensorrt", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["config"], r["dtype"], r["variant"]) for r in report["rows"]] == [("cmt_aqr_tiny", "fp32", "eager")]
    assert "tiny: RuntimeError: CUDA error: device-side assert triggered" in report["skipped"]
    assert "JPEG rows: RuntimeError: nvJPEG: decode failed" in report["skipped"]


def test_gpu_run_stops_at_once_when_the_package_does_not_import(tmp_path):
    """On the GPU machine without the carried wheels, gpu_run.sh says so and exits 2 before
    its long steps (each would fail at its first import and the device call be spent)."""
    calls = tmp_path / "calls"
    fake = tmp_path / "python3"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n'
                    'if [[ $1 == -c && $2 == *pydantic* ]]; then\n'
                    '    echo "ModuleNotFoundError: No module named \'pydantic\'" >&2; exit 1\nfi\nexit 0\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_run.sh"), "model"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "No module named 'pydantic'" in r.stdout and "gpu_wheels.sh" in r.stderr
    assert not any("bench/" in line for line in calls.read_text().splitlines())   # no step started



def test_host_syncs_are_counted_by_the_line_that_makes_them(model_gpu):
    """model_gpu's sync count on CUDA: every "synchronizing CUDA operation" warning that
    torch.cuda.set_sync_debug_mode("warn") raises during one call, grouped by the innermost
    source line outside torch, with the previous mode set back afterwards, also when the
    call fails (here a stand-in for the mode, which needs CUDA)."""
    import warnings

    import torch

    host_syncs = model_gpu.host_syncs
    torch_op = {}          # a function that torch's own Python code would hold, raising the sync warning
    exec(compile("import warnings\ndef op():\n    warnings.warn('called a synchronizing CUDA operation')\n",
                 str(Path(torch.__file__).parent / "fake_op.py"), "exec"), torch_op)
    modes = ["sync_previous"]

    def mode():
        return modes[-1]

    def syncing():
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)      # one line, three times
        torch_op["op"]()                                                             # counted at this line
        warnings.warn("something else", stacklevel=1)

    result = host_syncs(syncing, "cuda:0", (mode, modes.append))
    assert modes == ["sync_previous", "warn", "sync_previous"] and result["count"] == 4
    assert sorted(result["sites"].values()) == [1, 3]
    assert all(site.startswith("test/test_bench_gpu.py:") for site in result["sites"]), result

    def failing():
        raise RuntimeError()

    with pytest.raises(RuntimeError):
        host_syncs(failing, "cuda:0", (mode, modes.append))
    assert modes[-2:] == ["warn", "sync_previous"]
    assert host_syncs(syncing, "cpu", (mode, modes.append)) is None and len(modes) == 5
    with warnings.catch_warnings(record=True) as caught:      # the warnings filter and display are restored
        warnings.simplefilter("always")
        warnings.warn("after", stacklevel=1)
    assert [str(w.message) for w in caught] == ["after"]


def test_a_row_without_pre_and_post_times_prints_and_saves_them_as_not_timed(tmp_path, model_gpu, capsys):
    """The TensorRT rows time the dense part only: their pre- and post-processing print as '-'
    and are null in gpu.json, not 0 ms."""
    out = tmp_path / "gpu.json"
    report = model_gpu.Report("a GPU", out)
    timed = model_gpu.percentiles([0.010, 0.012, 0.011])
    report.add({"config": "cmt_aqr_r50_800x320", "dtype": "fp16", "variant": "TensorRT (ORT)", "device": "cuda",
                "model": timed, "stages_ms": {}, "pre": dict(model_gpu.NOT_TIMED), "post": dict(model_gpu.NOT_TIMED),
                "node_path": timed})
    line = capsys.readouterr().out.splitlines()[-1].split()
    assert line[:4] == ["cmt_aqr_r50_800x320", "fp16", "TensorRT", "(ORT)"] and line[8:10] == ["-", "-"]
    row = json.loads(out.read_text())["rows"][0]
    assert row["pre"]["p50_ms"] is None and row["post"]["p99_ms"] is None and row["model"]["p50_ms"] == 11.0
