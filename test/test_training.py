"""The training entry point: single process and DistributedDataParallel (gloo, 2 processes)."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aqr_perception.training.engine as engine_mod
import aqr_perception.training.schedule as schedule_mod
import aqr_perception.training.train as train_mod
from aqr_perception.config import load_config
from aqr_perception.data.synth.drive import generate_drive
from aqr_perception.model.checkpoint import load_checkpoint
from aqr_perception.training.schedule import lr_factor, steps_within_budget

SMALL = ["synth.frames_per_drive=3", "synth.lidar_azimuth_steps=360", "train.log_every=1",
         "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_data")
    cfg = load_config("tiny", overrides=SMALL)
    for seed in (0, 1):
        generate_drive(cfg, out, f"drive_{seed}", seed)
    return out


def test_lr_schedule_shapes():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 100, 0, "constant") == 1.0
    assert max(lr_factor(s, 100, 0, "cyclic") for s in range(100)) <= 1.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(data, out, *extra):
    return ["-m", "aqr_perception.training.train", "--data", str(data), "--out", str(out), "--quiet",
            "--device", "cpu", *sum((["--set", o] for o in SMALL), []), *extra]


def test_single_process_training_writes_resumable_checkpoints(data, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, *_train_cmd(data, out, "--max-steps", "3")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    model, blob = load_checkpoint(out / "final.pt")
    assert blob["meta"]["step"] == 3 and blob["meta"]["frames"] == 6
    assert blob["model_config"]["name"] == "cmt_aqr_tiny"
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 4
    # resume continues the step count from last.pt
    r = subprocess.run([sys.executable, *_train_cmd(data, out, "--max-steps", "5", "--resume", str(out / "last.pt"))],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    _, blob = load_checkpoint(out / "final.pt")
    assert blob["meta"]["step"] == 5
    # resuming a run that has nothing left to train keeps its record (and says so)
    r = subprocess.run([sys.executable, *_train_cmd(data, out, "--max-steps", "5", "--resume", str(out / "last.pt"))],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(out / "final.pt")[1]["meta"]["step"] == 5


def test_init_fine_tunes_from_a_checkpoint_and_refuses_another_architecture(data, tmp_path):
    """``--init``: the weights of the given checkpoint, a fresh step count and optimizer."""
    from aqr_perception.model.runtime import BUNDLED_CHECKPOINT

    out = tmp_path / "ft"
    r = subprocess.run([sys.executable, *_train_cmd(data, out, "--max-steps", "1", "--init", str(BUNDLED_CHECKPOINT),
                                                    "--set", "train.lr=1e-12")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    tuned, blob = load_checkpoint(out / "final.pt")
    bundled, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    assert blob["meta"]["step"] == 1
    w = "reference_points.weight"   # lr 1e-12: one step leaves the weights where --init put them
    assert torch.allclose(tuned.state_dict()[w], bundled.state_dict()[w], atol=1e-6)
    scratch, _ = load_checkpoint(_one_step_from_scratch(data, tmp_path))
    assert not torch.allclose(bundled.state_dict()[w], scratch.state_dict()[w], atol=1e-3)
    other = ["--set", "model.transformer.depth_num=16"]
    r = subprocess.run([sys.executable, *_train_cmd(data, tmp_path / "bad", "--max-steps", "1", "--init",
                                                    str(BUNDLED_CHECKPOINT), *other)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--init" in r.stderr and "position.rv_embedding.0.weight" in r.stderr


def _one_step_from_scratch(data, tmp_path):
    """final.pt of one step from scratch (what --init must differ from)."""
    out = tmp_path / "scratch"
    r = subprocess.run([sys.executable, *_train_cmd(data, out, "--max-steps", "1", "--set", "train.lr=1e-12")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "final.pt"


@pytest.mark.slow
def test_ddp_with_gloo_on_two_cpu_processes(data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           *_train_cmd(data, out, "--max-steps", "2", "--threads", "1")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 2
    model, _ = load_checkpoint(out / "final.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_steps_within_budget_counts_what_the_time_left_holds():
    # 10 done, 0.5 s per step, 30 s left -> 60 more
    assert steps_within_budget(1000, 10, 0.5, 30.0) == 70
    assert steps_within_budget(50, 10, 0.5, 30.0) == 50       # never past the step cap
    assert steps_within_budget(1000, 10, 0.5, -5.0) == 10     # budget already spent: stop now


class _FakeClock:
    """Stands in for ``time`` in the training modules: every monotonic() read advances
    ``tick`` seconds, and ``tick`` becomes ``slow_tick`` after ``slow_after`` reads."""

    def __init__(self, tick: float = 1.0, slow_after: int | None = None, slow_tick: float = 0.0) -> None:
        self.t, self.reads, self.tick, self.slow_after, self.slow_tick = 0.0, 0, tick, slow_after, slow_tick

    def monotonic(self) -> float:
        self.reads += 1
        if self.slow_after is not None and self.reads > self.slow_after:
            self.tick = self.slow_tick
        self.t += self.tick
        return self.t


def _budget_run(data, tmp_path, monkeypatch, clock, budget_s):
    for module in (train_mod, engine_mod, schedule_mod):       # every clock read of a run
        monkeypatch.setattr(module, "time", clock)
    cfg = load_config("tiny", overrides=SMALL + ["train.log_every=1000"])
    meta = train_mod.train(cfg, data, tmp_path / "run", device_name="cpu", max_steps=1000, progress=False,
                           time_budget_s=budget_s, budget_timing_steps=2)
    return meta, load_checkpoint(tmp_path / "run" / "final.pt")[1]["meta"]


def test_the_readme_time_budget_flag_is_minutes(data, tmp_path):
    """``train ... --time-budget 55`` as the README writes it (0.5 here): minutes, stored as
    seconds in the checkpoint, and the run fits (here: --max-steps, far below the budget)."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, *_train_cmd(data, out, "--time-budget", "0.5", "--max-steps", "2")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    _, blob = load_checkpoint(out / "final.pt")
    assert blob["meta"]["time_budget_s"] == 30.0 and blob["meta"]["step"] == 2


def test_time_budget_sets_the_step_count_from_the_timed_steps(data, tmp_path, monkeypatch):
    # one clock read per step at 1 s a read: a 12 s budget holds fewer than 12 steps,
    # far fewer than the 1000 allowed; the run ends where it was planned to, or one step
    # sooner (the epoch-end checkpoint reads the clock once more than the timed steps did)
    meta, stored = _budget_run(data, tmp_path, monkeypatch, _FakeClock(), 12.0)
    assert 3 <= meta["planned_steps"] < 12
    assert meta["planned_steps"] - 1 <= meta["step"] <= meta["planned_steps"]
    assert stored["step"] == meta["step"]
    assert stored["time_budget_s"] == 12.0


def test_time_budget_stops_a_run_that_slows_down_after_planning(data, tmp_path, monkeypatch):
    # planned at 1 s per read for a 40 s budget, then each read takes 100 s: the run
    # stops at the budget, well short of its plan, and still writes final.pt
    meta, stored = _budget_run(data, tmp_path, monkeypatch, _FakeClock(slow_after=8, slow_tick=100.0), 40.0)
    assert meta["planned_steps"] > 20
    assert meta["step"] < 10 and stored["step"] == meta["step"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_training_after_its_step_with_a_resumable_checkpoint(data, tmp_path, sig, code):
    """Ctrl-C (or systemd's SIGTERM) during training: the step in progress ends, last.pt holds
    the run up to it (what --resume needs), and one line says so, exit code 128 + signal
    (before: a KeyboardInterrupt traceback, and the steps since the last epoch end lost)."""
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, *_train_cmd(data, out, "--max-steps", "100000")],   # logs every step
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and \
            (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    steps = [int(row.split(",")[0]) for row in log.read_text().splitlines()[1:]]
    _, blob = load_checkpoint(out / "last.pt")
    assert blob["meta"]["step"] == steps[-1] >= 2 and "optimizer" in blob
    assert err.strip().splitlines() == [f"aqr-perception train: stopped at step {steps[-1]}: {out / 'last.pt'} holds "
                                        f"it (--resume {out / 'last.pt'} goes on)"]
    assert not (out / "final.pt").exists()


@pytest.mark.slow
def test_a_signal_to_one_ddp_rank_stops_every_rank_at_the_same_step(data, tmp_path):
    """SIGTERM to rank 1 alone (as a supervisor that signals one process might): the run
    ends, rank 0 saves last.pt at its last step and says so, nothing hangs in a collective.
    (That the ranks agree on the step is not seen from here: torchrun's own SIGTERM to the
    other rank, once one has exited, also ends it.)"""
    import time

    out = tmp_path / "ddp"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           *_train_cmd(data, out, "--max-steps", "100000", "--threads", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = out / "train_log.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and \
            (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.1)
    workers = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                             text=True).stdout.split()
    def rank(pid: str) -> str | None:
        entries = (Path("/proc") / pid / "environ").read_bytes().split(b"\0")
        return dict(e.decode().split("=", 1) for e in entries if b"=" in e).get("RANK")

    rank1 = [int(pid) for pid in workers if rank(pid) == "1"]
    assert len(rank1) == 1, workers
    os.kill(rank1[0], signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    steps = [int(row.split(",")[0]) for row in log.read_text().splitlines()[1:]]
    _, blob = load_checkpoint(out / "last.pt")
    assert blob["meta"]["step"] == steps[-1] >= 2 and blob["meta"]["world_size"] == 2
    assert f"aqr-perception train: stopped at step {steps[-1]}: {out / 'last.pt'} holds it" in err, err[-3000:]
    assert not (out / "final.pt").exists()
