"""Many bags in one evaluation. Two nuScenes mini_val scenes (exported synthetic drives,
converted back with nuscenes2bag) are pooled into one score that the devkit's own
DetectionEval gives for the whole split; each bag's row is its single-bag evaluation;
``torchrun`` ranks sharing the bags give the same report as one process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import CLI, run_cli

from aqr_perception.config import load_config

REPO = Path(__file__).resolve().parent.parent
SCENES = {"scene-0103": 51, "scene-0916": 52}       # the devkit's mini_val split
NODE_PARAMS = str(REPO / "config" / "nuscenes.param.yaml")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from aqr_perception.data.nuscenes_export import export_nuscenes

    cfg = load_config("tiny", overrides=["synth.frames_per_drive=6", "synth.lidar_azimuth_steps=360",
                                         "synth.lidar_mount_yaw_deg=-90", "synth.ego_yaw_rate=0.3"])
    root = tmp_path_factory.mktemp("pooled")
    export_nuscenes(cfg, root / "nuscenes", SCENES)
    out = run_cli("nuscenes2bag", "--dataroot", str(root / "nuscenes"), "--split", "mini_val",
                  "--out", str(root / "bags"), "--quiet", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def folder_report(converted, tmp_path_factory) -> dict:
    """The report of ``eval --bag <folder of the two bags>`` (one process)."""
    return _eval("--bag", str(converted / "bags"), out=tmp_path_factory.mktemp("folder"))


def _eval(*args: str, out: Path, env_cmd: list[str] | None = None) -> dict:
    cmd = (env_cmd or [str(CLI)]) + ["eval", *args, "--node-params", NODE_PARAMS, "--mode", "offline",
                                     "--out", str(out), "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def test_the_pooled_score_is_the_devkits_for_the_split_and_the_rows_are_the_bags(converted, folder_report,
                                                                                  tmp_path):
    bags = converted / "bags"
    pooled = _eval("--bag", str(bags / "scene-0103"), "--bag", str(bags / "scene-0916"),
                   "--devkit-eval", str(converted / "nuscenes"), out=tmp_path / "pooled")
    assert pooled["frames"] == pooled["frames_with_output"] == 4 and set(pooled["per_bag"]) == set(SCENES)
    # the devkit's DetectionEval over the whole mini_val split: the pooled numbers
    from aqr_perception.evaluation.submission import devkit_detection_eval

    official = devkit_detection_eval(converted / "nuscenes", "v1.0-mini", "mini_val",
                                     tmp_path / "pooled" / "results_nusc.json", tmp_path / "devkit",
                                     render_curves=False)
    assert pooled["mAP"] > 0
    assert official["mean_ap"] == pytest.approx(pooled["mAP"], abs=1e-9)
    assert official["nd_score"] == pytest.approx(pooled["NDS"], abs=1e-9)
    # each row is that bag evaluated alone, and a folder of bags is the same pool
    for scene in SCENES:
        alone = _eval("--bag", str(bags / scene), out=tmp_path / scene)
        assert pooled["per_bag"][scene]["mAP"] == pytest.approx(alone["mAP"], abs=1e-6)
        assert pooled["per_bag"][scene]["NDS"] == pytest.approx(alone["NDS"], abs=1e-6)
    folder = folder_report
    assert folder["per_bag"].keys() == pooled["per_bag"].keys() and folder["frames"] == pooled["frames"]
    assert folder["NDS"] == pytest.approx(pooled["NDS"], abs=1e-6)


@pytest.mark.slow
def test_torchrun_ranks_share_the_bags_and_give_the_same_report(converted, folder_report, tmp_path):
    bags = str(converted / "bags")
    one = folder_report
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", "29577",
                "-m", "aqr_perception.cli"]
    two = _eval("--bag", bags, out=tmp_path / "two", env_cmd=torchrun)
    assert two["ranks"] == 2 and one["ranks"] == 1
    assert (two["frames"], two["frames_with_output"]) == (one["frames"], one["frames_with_output"]) == (4, 4)
    # torchrun runs each rank at one thread: the same model, summed in another order
    assert two["mAP"] == pytest.approx(one["mAP"], abs=1e-6) and two["NDS"] == pytest.approx(one["NDS"], abs=1e-6)
    for scene in SCENES:
        assert two["per_bag"][scene]["NDS"] == pytest.approx(one["per_bag"][scene]["NDS"], abs=1e-6)
