"""The README's demo table is what the bundled model scores on the bundled drive (scored
here offline, which a replay test shows to be the same), so it cannot go stale."""
from __future__ import annotations

from pathlib import Path

import pytest

from aqr_perception.cli import DEFAULT_BAG
from aqr_perception.config import load_config
from aqr_perception.evaluation.answers import predict_offline
from aqr_perception.evaluation.evaluate import evaluate_drive
from aqr_perception.model.runtime import DetectorRuntime

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_demo_table_matches_the_bundled_model():
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in README.read_text().splitlines() if line.startswith("| ")}
    cfg = load_config("tiny")
    result, _ = evaluate_drive(DEFAULT_BAG.with_name("default_drive.gt.json"), cfg,
                               predict_offline(DEFAULT_BAG, cfg, DetectorRuntime(None, None, "cpu")))
    head = rows["default_drive"]
    assert [float(v) for v in head[1:5]] == pytest.approx(
        [result.mAP, result.NDS, result.mAP_present, result.NDS_present], abs=0.0015)
    assert head[5] == f"{len(result.present())}/10" and (int(head[-2]), int(head[-1])) == (result.num_gt,
                                                                                           result.num_pred)
    for name, ap in result.per_class_ap.items():
        n_gt = result.per_class_gt.get(name, 0)
        assert int(rows[name][1]) == n_gt and int(rows[name][2]) == result.per_class_pred.get(name, 0)
        assert rows[name][3] == ("n/a" if n_gt == 0 else f"{ap:.3f}")
