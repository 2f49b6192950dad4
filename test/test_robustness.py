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
