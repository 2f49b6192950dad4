"""Replay (node process over DDS) and offline (in-process pipeline) evaluation agree, also on a
bag whose ego pose is recorded just after each cloud."""


import numpy as np
import pytest
import torch
from bag_helpers import tf_after_clouds
from cli_helpers import run_cli

from aqr_perception.config import load_config
from aqr_perception.data.synth.drive import generate_drive
from aqr_perception.evaluation.answers import predict_offline
from aqr_perception.evaluation.evaluate import evaluate_drive
from aqr_perception.evaluation.replay import predict_replay
from aqr_perception.model import build_detector
from aqr_perception.model.checkpoint import save_checkpoint
from aqr_perception.model.runtime import DetectorRuntime


@pytest.mark.slow
def test_replay_and_offline_give_the_same_detections_and_metrics(tmp_path):
    cfg = load_config("tiny", overrides=["synth.frames_per_drive=5", "synth.lidar_azimuth_steps=360",
                                         "eval.score_threshold=0.0", "eval.max_boxes_per_sample=30"])
    drive = generate_drive(cfg, tmp_path, "drive", seed=7)
    torch.manual_seed(0)
    model = build_detector(cfg.model).eval()
    with torch.no_grad():                      # make a few queries confident so that boxes exist
        model.heads.cls[-1].bias.add_(1.5)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, {"note": "test"})

    offline = predict_offline(drive.bag, cfg, DetectorRuntime(ckpt, device="cpu"))
    # replayed from a copy whose /tf comes just after each cloud (LiDAR odometry): the node
    # must still get the pose first, as offline reading does, or its past sweeps are lost
    late = tf_after_clouds(drive.bag, tmp_path / "tf_late")
    offline_late = predict_offline(late, cfg, DetectorRuntime(ckpt, device="cpu"))
    replay = predict_replay(late, cfg, str(ckpt), "cpu", log=False)
    for token in offline:
        np.testing.assert_array_equal(offline[token].boxes, offline_late[token].boxes)
    assert sorted(offline) == sorted(replay) and len(offline) == 5
    for token in offline:
        a, b = offline[token], replay[token]
        assert a.names == b.names and len(a.names) == 30
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.lidar_weight, b.lidar_weight, atol=1e-5)
        assert (a.lidar_available, a.cameras_available) == (b.lidar_available, b.cameras_available) == (True, True)
    r_off, _ = evaluate_drive(drive.gt_json, cfg, offline)
    r_rep, _ = evaluate_drive(drive.gt_json, cfg, replay)
    assert r_off.NDS == pytest.approx(r_rep.NDS, abs=1e-4) and r_off.mAP == pytest.approx(r_rep.mAP, abs=1e-4)


def _velodyne_bag(tmp_path, clouds=3):
    import shutil

    from bag_helpers import rename_topic

    from aqr_perception.model.runtime import PACKAGE_RESOURCES

    src = PACKAGE_RESOURCES / "default_drive"
    bag = rename_topic(src, tmp_path / "velodyne_drive", "/LIDAR_TOP", "/velodyne_points", clouds=clouds)
    shutil.copy(src.with_name(src.name + ".gt.json"), bag.with_name(bag.name + ".gt.json"))
    return bag


def test_replay_eval_of_a_bag_with_other_topic_names_fails_at_once_naming_the_topic(tmp_path):
    import time

    bag = _velodyne_bag(tmp_path)
    t0 = time.monotonic()
    out = run_cli("eval", "--bag", str(bag), "--out", str(tmp_path / "out"), "--quiet", timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "/LIDAR_TOP" in out.stderr and "/velodyne_points" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
def test_replay_eval_passes_the_node_settings_to_the_node(tmp_path):
    import json

    import yaml

    bag = _velodyne_bag(tmp_path, clouds=3)
    params = tmp_path / "vehicle.param.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"lidar_topic": "/velodyne_points"}}}))
    out = run_cli("eval", "--bag", str(bag), "--node-params", str(params), "--out", str(tmp_path / "out"), "--quiet",
                  timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames_with_output"] == 3, report
    # the same through --set, with a mismatch the node cannot subscribe to: named within seconds
    out = run_cli("eval", "--bag", str(bag), "--set", "node.lidar_topic=/velodyne_points",
                  "--set", "node.image_transport=raw", "--out", str(tmp_path / "out2"), "--quiet", timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "did not subscribe to" in out.stderr and "/CAM_FRONT/image_rect_compressed" in out.stderr
