"""nuScenes in: a synthetic drive goes synthetic -> nuScenes format -> ``aqr-perception
nuscenes2bag`` -> bag, and that bag is the drive's own bag again (same points, JPEG bytes,
poses, calibration and ground truth), read by the node's pipeline into the same
detections. The converted bag is read with ``config/nuscenes.param.yaml``, as a user does."""
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from rosbags.rosbag2 import Reader
from scipy.spatial.transform import Rotation

from aqr_perception.config import load_config, node_config_from_param_file
from aqr_perception.data.ground_truth import read_ground_truth
from aqr_perception.data.nuscenes_export import export_nuscenes
from aqr_perception.data.synth.drive import generate_drive
from aqr_perception.data.typestore import project_typestore
from aqr_perception.frames.conversions import read_points_numpy
from aqr_perception.stamps import header_ns

REPO = Path(__file__).resolve().parent.parent
SCENE, SEED = "scene-0916", 23          # a scene name of the devkit's mini_val split
#: nuScenes' sensor layout: LIDAR_TOP yawed -90 deg on the vehicle, and an ego that turns,
#: so that a frame mistake anywhere shows
NUSCENES_LAYOUT = ["synth.lidar_mount_yaw_deg=-90", "synth.ego_yaw_rate=0.3"]


@pytest.fixture(scope="module")
def drives(tmp_path_factory):
    cfg = load_config("tiny", overrides=["synth.frames_per_drive=11", "synth.lidar_azimuth_steps=360",
                                         *NUSCENES_LAYOUT])
    root = tmp_path_factory.mktemp("n2b")
    export_nuscenes(cfg, root / "nuscenes", {SCENE: SEED})
    direct = generate_drive(cfg, root / "direct", "drive", SEED)
    out = run_cli("nuscenes2bag", "--dataroot", str(root / "nuscenes"), "--version", "v1.0-mini",
                  "--split", "mini_val", "--out", str(root / "converted"), "--quiet", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return cfg, direct, root / "converted" / SCENE


def _messages(bag) -> dict:
    """topic -> {stamp in µs: message} (nuScenes keeps microseconds)."""
    store = project_typestore()
    out: dict = {}
    with Reader(bag) as reader:
        for c, _, raw in reader.messages():
            m = store.deserialize_cdr(raw, c.msgtype)
            stamp = header_ns(m.transforms[0]) if c.msgtype == "tf2_msgs/msg/TFMessage" else header_ns(m)
            out.setdefault(c.topic, {})[stamp // 1000] = m
    return out


def _matrix(t) -> np.ndarray:
    T = np.eye(4)
    r, p = t.transform.rotation, t.transform.translation
    T[:3, :3] = Rotation.from_quat([r.x, r.y, r.z, r.w]).as_matrix()
    T[:3, 3] = [p.x, p.y, p.z]
    return T


def test_the_converted_bag_carries_the_drive(drives):
    cfg, direct, converted = drives
    a, b = _messages(direct.bag), _messages(converted)
    clouds_a, clouds_b = a[cfg.node.lidar_topic], b["/LIDAR_TOP"]
    assert sorted(clouds_a) == sorted(clouds_b) and len(clouds_b) == 11                 # every sweep
    for stamp, cloud in clouds_b.items():
        assert cloud.header.frame_id == "LIDAR_TOP" and cloud.point_step == 20
        assert [(f.name, f.datatype) for f in cloud.fields] == [(n, 7) for n in ("x", "y", "z", "intensity", "ring")]
        np.testing.assert_array_equal(read_points_numpy(cloud, ["x", "y", "z", "intensity", "ring"]),
                                      read_points_numpy(clouds_a[stamp], ["x", "y", "z", "intensity", "ring"]))
    for cam in cfg.node.camera_names:
        images_a, images_b = a[cfg.node.image_topic_format.format(camera=cam)], b[f"/{cam}/compressed"]
        assert sorted(images_a) == sorted(images_b)
        assert all(bytes(images_b[s].data) == bytes(images_a[s].data) for s in images_b)   # not re-encoded
        info_a, info_b = a[f"/{cam}/camera_info"], b[f"/{cam}/camera_info"]
        assert all(np.allclose(info_a[s].k, info_b[s].k) for s in info_b)
    for stamp, tf in b["/tf"].items():                                                 # map -> base_link
        np.testing.assert_allclose(_matrix(tf.transforms[0]), _matrix(a["/tf"][stamp].transforms[0]), atol=1e-9)
    # /tf_static: base_link -> each sensor, the same rig as the drive's base -> LiDAR -> camera chain
    first = lambda topics: next(iter(topics["/tf_static"].values())).transforms  # noqa: E731
    static_a = {t.child_frame_id: _matrix(t) for t in first(a)}
    static_b = {t.child_frame_id: (t.header.frame_id, _matrix(t)) for t in first(b)}
    assert {parent for parent, _ in static_b.values()} == {"base_link"}
    for cam in cfg.node.camera_names:
        np.testing.assert_allclose(static_b[cam][1], static_a["LIDAR_TOP"] @ static_a[cam], atol=1e-9)


def test_the_converted_ground_truth_is_the_drives_at_the_key_frames(drives):
    cfg, direct, converted = drives
    classes = list(cfg.model.classes)
    gt_a = read_ground_truth(direct.gt_json, classes)
    gt_b = read_ground_truth(converted.with_name(f"{SCENE}.gt.json"), classes)
    assert len(gt_b) == 3 and set(gt_b) <= set(gt_a)                                   # key frames: 0, 0.25, 0.5 s
    for stamp, b in gt_b.items():
        a = gt_a[stamp]
        assert b.names == a.names and list(b.num_lidar_pts) == list(a.num_lidar_pts)
        np.testing.assert_allclose(b.lidar_boxes[:, :6], a.lidar_boxes[:, :6], atol=1e-6)
        np.testing.assert_allclose(np.angle(np.exp(1j * (b.lidar_boxes[:, 6] - a.lidar_boxes[:, 6]))), 0, atol=1e-6)
        np.testing.assert_allclose(b.global_boxes[:, :6], a.global_boxes[:, :6], atol=1e-6)
        np.testing.assert_allclose(b.lidar_to_global, a.lidar_to_global, atol=1e-9)
        # nuScenes stores no velocity: the devkit's finite difference over 0.25 s stands in for it
        moving = np.hypot(*a.global_boxes[:, 7:9].T) > 1.0
        assert np.nanmedian(np.hypot(*(b.global_boxes[moving, 7:9] - a.global_boxes[moving, 7:9]).T)) < 0.5


def test_the_pipeline_detects_the_same_from_both_bags(drives):
    from aqr_perception.evaluation.answers import predict_offline
    from aqr_perception.model.runtime import DetectorRuntime

    cfg, direct, converted = drives
    runtime = DetectorRuntime(None, None, "cpu")
    cfg = cfg.model_copy(update={"model": runtime.cfg})
    nuscenes_cfg = cfg.model_copy(update={"node": node_config_from_param_file(REPO / "config" / "nuscenes.param.yaml")})
    a = predict_offline(direct.bag, cfg, runtime)
    b = predict_offline(converted, nuscenes_cfg, runtime)
    assert set(b) == set(a) and len(b) == 11
    for token, ans in b.items():
        assert ans.names == a[token].names and len(ans.names) > 0
        np.testing.assert_allclose(ans.scores, a[token].scores, atol=1e-4)
        np.testing.assert_allclose(ans.boxes, a[token].boxes, atol=1e-3)


def test_asking_for_what_is_not_there_is_one_line_and_exit_code_2(drives, tmp_path):
    _, _, converted = drives
    dataroot = converted.parent.parent / "nuscenes"
    for args, words in ((["--dataroot", str(tmp_path)], "no v1.0-mini tables in"),
                        (["--dataroot", str(dataroot), "--scenes", "scene-9999"], "scene(s) scene-9999 not in"),
                        (["--dataroot", str(dataroot), "--split", "no_such_split"], "unknown split 'no_such_split'")):
        out = run_cli("nuscenes2bag", *args, "--out", str(tmp_path / "x"), "--quiet", timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and words in lines[0], out.stderr


@pytest.mark.slow
def test_the_readme_eval_of_a_converted_scene_replays_it_through_the_node(drives, tmp_path):
    """``aqr-perception eval --bag <scene> --node-params config/nuscenes.param.yaml``: the node
    reads the converted topics, answers every key frame, and scores as the offline path does;
    with ``--devkit-eval`` the official DetectionEval scores its submission the same, and
    ``--submission FILE`` writes the same answers from the offline path."""
    import json
    import re

    _, _, converted = drives
    scores = {}
    for mode in ("offline", "replay"):
        official = (["--devkit-eval", str(converted.parent.parent / "nuscenes")] if mode == "replay"
                    else ["--submission", str(tmp_path / "offline_submission.json")])
        out = run_cli("eval", "--bag", str(converted), "--node-params",
                      str(REPO / "config" / "nuscenes.param.yaml"), "--mode", mode, *official,
                      "--out", str(tmp_path / mode), "--quiet", timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        report = json.loads((tmp_path / mode / "report.json").read_text())
        assert report["frames"] == report["frames_with_output"] == 3
        scores[mode] = (report["mAP"], report["NDS"])
    assert scores["replay"] == pytest.approx(scores["offline"], abs=1e-6)
    line = next(x for x in out.stdout.splitlines() if x.startswith("nuScenes DetectionEval"))
    devkit_map, devkit_nds, map_, nds = map(float, re.findall(r"(?:mAP|NDS) ([0-9.]+)", line))
    # the official pipeline on the replay's submission: the replay's numbers
    assert (devkit_map, devkit_nds) == (map_, nds) == (round(scores["replay"][0], 4), round(scores["replay"][1], 4))
    replayed = json.loads((tmp_path / "replay" / "results_nusc.json").read_text())["results"]
    offline = json.loads((tmp_path / "offline_submission.json").read_text())["results"]
    assert set(offline) == set(replayed) and len(offline) == 3
    assert all(len(offline[t]) == len(replayed[t]) > 0 for t in offline)
    assert list((tmp_path / "replay" / "devkit" / "plots").glob("*.pdf"))                # DetectionEval's plots


def test_the_imported_cmt_model_runs_in_the_node_on_a_converted_scene(drives, tmp_path):
    """The README's nuScenes eval with ``--checkpoint`` of an ``import-cmt`` model: the voxel
    branch (spconv), VoVNet and the per-layer heads run inside the node, over DDS, on the
    converted scene's stacked sweeps (the key frame + 10 past) and JPEGs. The weights are the fixture's random ones
    (the real file is not here) at a small input size (64x160 images) and over a quarter of the range (a 44x44
    BEV: the decoder's keys and the BEV convolutions are a sixteenth; the same weights, at about a third of the
    time per sweep of 128x320 over half the range), so the answers, not the scores, count."""
    import json

    from cmt_fixture import VOV, write_official_file

    _, _, converted = drives
    official = write_official_file(tmp_path / "voxel0075_vov_1600x640_epoch20.pth")
    model = tmp_path / "vov.pt"
    small = ["model.image.input_height=64", "model.image.input_width=160",
             "model.point_cloud_range=[-13.2,-13.2,-5.0,13.2,13.2,3.0]", "model.bev_size=44"]
    r = run_cli("import-cmt", str(official), "--config", VOV, "--allow-missing", "aqr",
                "--out", str(model), *[a for s in small for a in ("--set", s)], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = run_cli("eval", "--bag", str(converted), "--node-params",
                  str(REPO / "config" / "nuscenes.param.yaml"), "--checkpoint", str(model),
                  "--out", str(tmp_path / "eval"), "--quiet", timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["frames"] == report["frames_with_output"] == 3
    assert report["num_pred"] > 0 and report["checkpoint"] == str(model)


def test_the_devkits_detection_eval_agrees_with_the_projects(drives, tmp_path):
    """The answers of a converted scene in the official submission format, scored by the
    devkit's DetectionEval against the dataset, and by the project's own metrics against the
    converted ground truth: the same numbers."""
    from aqr_perception.evaluation.answers import predict_offline
    from aqr_perception.evaluation.evaluate import evaluate_drive
    from aqr_perception.evaluation.submission import devkit_detection_eval, submission, write_submission
    from aqr_perception.model.runtime import DetectorRuntime

    cfg, _, converted = drives
    runtime = DetectorRuntime(None, None, "cpu")
    cfg = cfg.model_copy(update={"model": runtime.cfg, "node": node_config_from_param_file(
        REPO / "config" / "nuscenes.param.yaml")})
    gt_json = converted.with_name(f"{SCENE}.gt.json")
    answers = predict_offline(converted, cfg, runtime)
    ours, _ = evaluate_drive(gt_json, cfg, answers)
    sub = submission(answers, read_ground_truth(gt_json, list(cfg.model.classes)))
    assert len(sub["results"]) == 3 and sum(map(len, sub["results"].values())) > 0
    path = write_submission(tmp_path / "results_nusc.json", sub)
    devkit = devkit_detection_eval(converted.parent.parent / "nuscenes", "v1.0-mini", "mini_val", path,
                                   tmp_path / "devkit", render_curves=False)
    assert ours.mAP > 0.0
    assert devkit["mean_ap"] == pytest.approx(ours.mAP, abs=1e-9)
    assert devkit["nd_score"] == pytest.approx(ours.NDS, abs=1e-9)
    for key, name in (("trans_err", "mATE"), ("scale_err", "mASE"), ("orient_err", "mAOE"), ("vel_err", "mAVE")):
        assert devkit["tp_errors"][key] == pytest.approx(ours.tp_errors[name], abs=1e-9, nan_ok=True), key


def test_the_readme_training_on_converted_scenes_uses_the_key_frames_with_cbgs(drives, tmp_path):
    """``aqr-perception train --config config/tiny_nuscenes.yaml --data <converted scenes>``:
    the scenes' sweeps are read, the annotated key frames are the samples, CBGS repeats them."""
    from aqr_perception.model.checkpoint import load_checkpoint

    _, _, converted = drives
    out = run_cli("train", "--config", str(REPO / "config" / "tiny_nuscenes.yaml"),
                  "--data", str(converted.parent), "--out", str(tmp_path / "run"), "--max-steps", "2",
                  "--quiet", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    meta = load_checkpoint(tmp_path / "run" / "final.pt")[1]["meta"]
    assert meta["frames"] == 3 and meta["step"] == 2                     # the 3 key frames of 11 sweeps
    assert meta["samples_per_epoch"] > meta["frames"]                     # CBGS repeats them
    assert meta["config"]["node"]["image_topic_format"] == "/{camera}/compressed"


def test_the_conversion_is_deterministic(drives, tmp_path):
    cfg, _, converted = drives
    out = run_cli("nuscenes2bag", "--dataroot", str(converted.parent.parent / "nuscenes"),
                  "--scenes", SCENE, "--out", str(tmp_path), "--quiet", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]

    def messages(bag):
        with Reader(bag) as reader:
            return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]

    assert messages(tmp_path / SCENE) == messages(converted)
    assert (tmp_path / f"{SCENE}.gt.json").read_text() == converted.with_name(f"{SCENE}.gt.json").read_text()


def test_ten_sweeps_stack_with_their_time_lag_not_the_ring(drives):
    """Sweeps stack with the time lag as the fifth point channel (CMT reads the key frame + 10 past); the bag's
    fifth field is the ring, which must not end up there."""
    from aqr_perception.data.bag_reader import read_frames

    cfg, _, converted = drives
    cfg = cfg.model_copy(update={"node": node_config_from_param_file(REPO / "config" / "nuscenes.param.yaml")})
    lidar = cfg.model.lidar.model_copy(update={"sweeps": 10, "point_features": 5, "sweep_max_age_s": 0.6})
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"lidar": lidar})})
    frames = list(read_frames(converted, cfg))
    last = frames[-1].arrays.points
    assert last.shape[1] == 5
    np.testing.assert_allclose(np.unique(last[:, 4]), 0.05 * np.arange(10), atol=1e-6)   # 10 sweeps, 0 ... 0.45 s


def test_files_missing_from_a_partial_download_are_left_out_and_said(drives, tmp_path):
    """A dataroot with a sweep file missing, another cut short and a camera image missing
    (a partial download): the bag is the full conversion less exactly those messages, and
    stderr says how many (even with --quiet); a scene with no LiDAR file at all is one line
    and exit code 2 (before: a FileNotFoundError or reshape traceback)."""
    import json
    import shutil

    _, _, converted = drives
    root = tmp_path / "nuscenes"
    shutil.copytree(converted.parent.parent / "nuscenes", root)
    tables = {t: json.loads((root / "v1.0-mini" / f"{t}.json").read_text()) for t in ("sample_data",)}
    lidar = sorted((sd for sd in tables["sample_data"] if sd["filename"].startswith("sweeps/LIDAR_TOP")),
                   key=lambda sd: sd["timestamp"])
    camera = next(sd for sd in tables["sample_data"] if sd["filename"].startswith("samples/CAM_BACK/"))
    (root / lidar[1]["filename"]).unlink()
    path = root / lidar[2]["filename"]
    path.write_bytes(path.read_bytes()[:-7])                                 # not a whole number of points
    (root / camera["filename"]).unlink()
    out = run_cli("nuscenes2bag", "--dataroot", str(root), "--scenes", SCENE, "--out", str(tmp_path / "bags"),
                  "--quiet", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{SCENE}: 2 of {len([sd for sd in tables['sample_data'] if 'LIDAR_TOP' in sd['filename']])} LiDAR files " \
           "and 1 camera files missing or unreadable" in out.stderr, out.stderr

    def messages(bag):
        with Reader(bag) as reader:
            return [(c.topic, t) for c, t, _ in reader.messages()]

    left_out = {("/LIDAR_TOP", 1000 * lidar[1]["timestamp"]), ("/LIDAR_TOP", 1000 * lidar[2]["timestamp"]),
                ("/CAM_BACK/compressed", 1000 * camera["timestamp"]),
                ("/CAM_BACK/camera_info", 1000 * camera["timestamp"])}
    full = messages(converted)
    assert left_out <= set(full)
    assert messages(tmp_path / "bags" / SCENE) == [m for m in full if m not in left_out]
    shutil.rmtree(root / "sweeps")
    shutil.rmtree(root / "samples" / "LIDAR_TOP")
    out = run_cli("nuscenes2bag", "--dataroot", str(root), "--scenes", SCENE, "--out", str(tmp_path / "none"),
                  "--quiet", timeout=300)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and f"{SCENE}: none of its" in lines[0], out.stderr
    assert not (tmp_path / "none").exists()
