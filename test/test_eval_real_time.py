"""Real-time replay (``eval --rate``): the node skips the sweeps it has no time for, the report
counts them and states the answered rate, and only the answered frames are scored."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aqr_perception.cli import DEFAULT_BAG
from aqr_perception.config import load_config
from aqr_perception.evaluation.answers import predict_offline
from aqr_perception.evaluation.evaluate import drive_eval, evaluate_drive, global_answers
from aqr_perception.evaluation.metrics import evaluate
from aqr_perception.model.runtime import DetectorRuntime

GT = DEFAULT_BAG.with_name("default_drive.gt.json")


def _gt_subset(tmp_path, keep: set[str]):
    """The GT file with only the frames of ``keep`` (tokens): the reference a user would write."""
    data = json.loads(GT.read_text())
    data["frames"] = [f for f in data["frames"] if str(f["stamp_ns"]) in keep]
    path = tmp_path / "gt_subset.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def offline():
    cfg = load_config("tiny")
    return cfg, predict_offline(DEFAULT_BAG, cfg, DetectorRuntime(None, None, "cpu"))


def test_answered_only_scores_what_a_gt_of_the_answered_frames_scores(offline, tmp_path):
    cfg, answers = offline
    kept = dict(sorted(answers.items())[::3])                # a node that answered every third sweep
    classes = list(cfg.model.classes)
    ev = drive_eval(GT, kept, classes, cfg.eval.stamp_tolerance_s, answered_only=True)
    assert sorted(ev.gt) == sorted(kept) and len(ev.unmatched) == len(answers) - len(kept)
    only = evaluate(ev.gt, global_answers(ev), classes, cfg.eval)
    reference, _ = evaluate_drive(_gt_subset(tmp_path, set(kept)), cfg, kept)
    assert only.num_gt == reference.num_gt and only.mAP == pytest.approx(reference.mAP, abs=1e-12)
    assert only.NDS == pytest.approx(reference.NDS, abs=1e-12)
    # stepwise semantics: the same answers, the unanswered frames scored as all missed
    missed = drive_eval(GT, kept, classes, cfg.eval.stamp_tolerance_s)
    assert len(missed.gt) == len(answers)
    assert evaluate(missed.gt, global_answers(missed), classes, cfg.eval).mAP < 0.6 * only.mAP


@pytest.mark.slow
def test_eval_rate_counts_the_unanswered_sweeps_and_scores_the_answered(offline, tmp_path):
    """``aqr-perception eval --rate 10`` as a user runs it: the bundled drive's 16 sweeps come
    in 75 ms, far faster than any CPU runs the model, so the node answers some of them."""
    cfg, answers = offline
    out = tmp_path / "rt"
    run = subprocess.run([sys.executable, "-m", "aqr_perception.cli", "eval", "--bag", str(DEFAULT_BAG), "--rate",
                          "10", "--set", "eval.pictures=0", "--out", str(out)], env=dict(os.environ), text=True,
                         capture_output=True, timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["replay_rate"] == 10 and report["sweeps_in_bag"] == 16 == report["frames"]
    assert 1 <= report["sweeps_answered"] < 16 and report["frames_scored"] == report["frames_with_output"]
    assert report["frames_scored"] + report["frames_unmatched"] == 16
    assert report["answered_rate_hz"] == pytest.approx(report["sweeps_answered"] / 0.75, rel=0.01)
    answered = {t for t in answers if t not in set(report["unmatched_tokens"])}
    assert len(answered) == report["frames_scored"]
    reference, _ = evaluate_drive(_gt_subset(tmp_path, answered), cfg, {t: answers[t] for t in answered})
    assert report["num_gt"] == reference.num_gt     # only the answered frames' boxes are scored
    md = (out / "report.md").read_text()
    assert f"answered {report['sweeps_answered']} of 16 sweeps" in md and "are not scored" in md
    assert f"real time at 10x: the node answered {report['sweeps_answered']}/16 sweeps" in run.stdout
