"""Answers meet their ground truth by the nearest stamp within eval.stamp_tolerance_s, not
by exact nanoseconds; GT frames without an answer that near are counted, and the report
says which score threshold the node ran at."""
from __future__ import annotations

import json

import pytest

from aqr_perception.cli import DEFAULT_BAG
from aqr_perception.config import load_config
from aqr_perception.evaluation.answers import predict_offline
from aqr_perception.evaluation.evaluate import drive_eval, evaluate_drive, match_stamps, run_eval
from aqr_perception.model.runtime import DetectorRuntime

GT = DEFAULT_BAG.with_name("default_drive.gt.json")


def test_match_stamps_takes_the_nearest_within_tolerance_one_to_one():
    gt = [1000, 2000, 3000, 4000]
    answers = [1004, 1990, 2010, 3600, 9000]
    assert match_stamps(gt, answers, 15) == {1000: 1004, 2000: 1990}   # 1990 and 2010 tie: the earlier
    assert match_stamps(gt, answers, 0) == {}
    assert match_stamps([1000, 1010], [1006], 10) == {1010: 1006}         # the nearer GT takes the answer


@pytest.fixture(scope="module")
def answers():
    cfg = load_config("tiny")
    return cfg, predict_offline(DEFAULT_BAG, cfg, DetectorRuntime(None, None, "cpu"))


def _shifted_gt(tmp_path, shift_ns: int):
    data = json.loads(GT.read_text())
    for frame in data["frames"]:
        frame["stamp_ns"] += shift_ns
    path = tmp_path / f"gt_{shift_ns}.json"
    path.write_text(json.dumps(data))
    return path


def test_gt_a_microsecond_off_scores_as_the_exact_gt(answers, tmp_path):
    cfg, ans = answers
    exact, ev0 = evaluate_drive(GT, cfg, ans)
    shifted, ev1 = evaluate_drive(_shifted_gt(tmp_path, 1000), cfg, ans)
    assert len(ev1.answers) == len(ev0.answers) == ev0.frames_total and not ev1.unmatched
    assert shifted.mAP == pytest.approx(exact.mAP, abs=1e-9) and shifted.NDS == pytest.approx(exact.NDS, abs=1e-9)
    assert exact.mAP > 0.1
    # beyond the tolerance (here half the LiDAR period) nothing matches, and that is counted
    far = drive_eval(_shifted_gt(tmp_path, 25_000_000), ans, list(cfg.model.classes), cfg.eval.stamp_tolerance_s)
    assert far.answers == {} and len(far.unmatched) == far.frames_total


def test_the_report_states_the_threshold_and_the_matching(tmp_path):
    cfg = load_config("tiny", ["eval.pictures=0"])
    _, report = run_eval(DEFAULT_BAG, _shifted_gt(tmp_path, 1000), cfg, "", "offline", tmp_path / "out")
    assert report["score_threshold"] == 0.05 and report["stamp_tolerance_s"] == 0.01
    assert report["frames_unmatched"] == 0 and report["frames_with_output"] == report["frames"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "score threshold 0.05" in md and "its own default is 0.3" in md and "within 10 ms" in md
    assert list(report["by_distance"]) == ["0-20 m", "20-30 m", "30-50 m"] and "| 0-20 m |" in md
    assert (tmp_path / "out" / "by_distance.png").stat().st_size > 5000 and "by_distance.png" in md


def test_two_evaluations_at_once_on_one_host_do_not_mix(tmp_path):
    """Two ``eval`` replays started together from a shell without ROS_DOMAIN_ID, one with
    the bundled model and one with untrained weights: each takes a private domain, so each
    report holds its own node's answers only (the bundled run scores what offline scores)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    cmd = [sys.executable, "-m", "aqr_perception.cli", "eval", "--bag", str(DEFAULT_BAG), "--set", "eval.pictures=0"]
    runs = {name: subprocess.Popen([*cmd, *extra, "--out", str(tmp_path / name)], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for name, extra in (("bundled", []), ("untrained", ["--checkpoint", "none"]))}
    logs = {name: p.communicate(timeout=540)[0] for name, p in runs.items()}
    for name, p in runs.items():
        assert p.returncode == 0, logs[name][-3000:]
    reports = {name: json.loads((tmp_path / name / "report.json").read_text()) for name in runs}
    cfg = load_config("tiny")
    offline, _ = evaluate_drive(GT, cfg, predict_offline(DEFAULT_BAG, cfg, DetectorRuntime(None, None, "cpu")))
    assert reports["bundled"]["frames_with_output"] == reports["bundled"]["frames"]
    assert reports["bundled"]["NDS"] == pytest.approx(offline.NDS, abs=1e-6)
    assert reports["bundled"]["mAP"] == pytest.approx(offline.mAP, abs=1e-6)
    assert reports["untrained"]["mAP"] < 0.05 < offline.mAP
    domains = {name: next(line for line in log.splitlines() if line.startswith("replay on ROS domain"))
               for name, log in logs.items()}
    assert all("private" in d for d in domains.values()) and len(set(domains.values())) == 2
