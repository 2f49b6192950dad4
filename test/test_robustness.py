"""The robustness report: share of clean NDS kept per model, routing weights only for AQR models."""
from aqr_perception.evaluation.robustness import robustness_table


def test_table_shares_of_clean_nds_and_routing_columns():
    results = {
        "clean": {"aqr": {"NDS": 0.40, "mAP": 0.30, "mean_lidar_weight": 0.7, "mean_camera_weight": 0.8},
                  "baseline": {"NDS": 0.50, "mAP": 0.35}},
        "no_lidar": {"aqr": {"NDS": 0.10, "mAP": 0.05, "mean_lidar_weight": 0.9, "mean_camera_weight": 0.6},
                     "baseline": {"NDS": 0.05, "mAP": 0.01}},
    }
    lines = robustness_table(results, ["aqr", "baseline"]).splitlines()
    assert lines[0].count("|") == 2 + 5 * 2
    no_lidar = [c.strip() for c in lines[3].strip("|").split("|")]
    assert no_lidar == ["no_lidar", "0.100", "0.050", "0.250", "0.900", "0.600", "0.050", "0.010", "0.100", "n/a",
                        "n/a"]


def test_routing_means_skip_frames_without_the_modality():
    import numpy as np

    from aqr_perception.evaluation.answers import FrameAnswer
    from aqr_perception.evaluation.report import routing_summary

    def frame(scores, lw, cw, lidar=True, cameras=True):
        n = len(scores)
        return FrameAnswer(np.zeros((n, 9)), np.array(scores), ["car"] * n, np.array(lw), np.array(cw),
                               lidar, cameras)

    preds = {"1": frame([0.9, 0.1], [0.6, 0.0], [0.8, 0.0]),          # the 0.1 detection is below the 0.3 threshold
             "2": frame([0.5], [0.99], [0.4], lidar=False),            # LiDAR weight of a frame without LiDAR
             "3": frame([0.7], [0.2], [0.99], cameras=False)}
    s = routing_summary(preds, 0.3)
    assert abs(s["mean_lidar_weight"] - 0.4) < 1e-12                     # (0.6 + 0.2) / 2
    assert abs(s["mean_camera_weight"] - 0.6) < 1e-12                    # (0.8 + 0.4) / 2
    assert (s["routed_detections"], s["with_lidar"], s["with_cameras"]) == (3, 2, 2)
    none = routing_summary({"2": frame([0.5], [0.99], [0.4], lidar=False)}, 0.3)
    assert none["mean_lidar_weight"] != none["mean_lidar_weight"]      # NaN: no frame had LiDAR


def test_baseline_arguments_name_their_columns():
    import pytest

    from aqr_perception.cli import baseline_models

    assert baseline_models([]) == {}
    assert baseline_models(["runs/b.pt", "fixed=runs/f.pt"]) == {"baseline": "runs/b.pt", "fixed": "runs/f.pt"}
    for bad in (["aqr=x.pt"], ["a.pt", "b.pt"], ["name="], ["=x.pt"]):
        with pytest.raises(ValueError):
            baseline_models(bad)


def test_a_corrupted_drive_is_scored_against_the_clean_ground_truth(tmp_path):
    """reduced_lidar thins the sweeps but scores the same GT boxes as clean (the rule the
    report states), so a box left without points still counts."""
    from aqr_perception.config import load_config
    from aqr_perception.evaluation.robustness import GT_RULE, run_robustness

    cfg = load_config("tiny", ["synth.frames_per_drive=3", "synth.lidar_azimuth_steps=360"])
    report = run_robustness(cfg, {"aqr": ""}, [1100], tmp_path, ("clean", "reduced_lidar"), log=lambda *_: None)
    clean, reduced = report["results"]["clean"]["aqr"], report["results"]["reduced_lidar"]["aqr"]
    assert clean["num_gt"] == reduced["num_gt"] > 0
    assert GT_RULE in (tmp_path / "robustness.md").read_text()


def test_the_readme_robustness_line_scores_each_named_model(tmp_path):
    """``aqr-perception robustness --checkpoint A.pt --baseline B.pt --baseline fixed=C.pt``, as
    the README writes it (one short drive): a column per model, each scored with its own
    checkpoint: the bundled one twice (the same numbers) and untrained weights (far lower)."""
    import json

    from cli_helpers import run_cli

    from aqr_perception.model.runtime import BUNDLED_CHECKPOINT, UNTRAINED

    out = run_cli("robustness", "--checkpoint", BUNDLED_CHECKPOINT, "--baseline", UNTRAINED,
                  "--baseline", f"fixed={BUNDLED_CHECKPOINT}", "--drives", "1", "--frames", "3",
                  "--conditions", "clean", "no_cameras", "--set", "synth.lidar_azimuth_steps=360",
                  "--out", tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "robustness.json").read_text())["results"]
    for condition in ("clean", "no_cameras"):
        scores = {name: r["NDS"] for name, r in results[condition].items()}
        assert set(scores) == {"aqr", "baseline", "fixed"}
        assert scores["aqr"] == scores["fixed"] and scores["baseline"] < scores["aqr"] - 0.1, scores
    assert "fixed" in out.stdout and "baseline" in out.stdout
