"""``bench/model_gpu.py`` (the GPU run prepared for a lent device) runs end to end on the
CPU at tiny size, so that the first task with a GPU finds it working."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_benchmark_runs_at_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "model_gpu.py"), "--tiny", "--device", "cpu",
                        "--dtypes", "fp32", "bf16", "fp16", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(row["config"], row["dtype"], row["variant"]): row for row in report["rows"]}
    assert set(rows) == {("cmt_aqr_tiny", "fp32", "eager"), ("cmt_aqr_tiny", "bf16", "eager")}
    for row in rows.values():
        for part in ("model", "pre", "post", "node_path"):
            assert 0 < row[part]["p50_ms"] <= row[part]["p99_ms"]
        assert row["node_path"]["p50_ms"] >= row["model"]["p50_ms"]
        assert {"image backbone", "decoder", "LiDAR voxelize"} <= set(row["stages_ms"])
    assert any("fp16 autocast is for CUDA" in s for s in report["skipped"])
    assert any("TensorRT" in s for s in report["skipped"])
    assert "cmt_aqr_tiny" in r.stdout and "node p50/p99" in r.stdout
