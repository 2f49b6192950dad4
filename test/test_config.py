"""The one configuration object: loading, inheritance, overrides and error messages."""
import pytest
import yaml

from aqr_perception.config import (
    CONFIG_DIR,
    AqrConfig,
    ConfigError,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)


@pytest.mark.parametrize("name", ["tiny", "cmt_aqr_r50_800x320"])
def test_shipped_configs_validate(name):
    cfg = load_config(name)
    assert isinstance(cfg, AqrConfig)
    assert cfg.model.classes[0] == "car" and len(cfg.model.classes) == 10


def test_r50_config_matches_the_published_cmt_setting():
    m = load_config("cmt_aqr_r50_800x320").model
    # spec: 800x320 input, stride 16 -> 20x50 per view, 6 views = 6,000 image tokens
    assert m.feature_hw == (20, 50) and m.num_views * 20 * 50 == 6000
    assert m.bev_size ** 2 == 32400
    t = m.transformer
    assert (t.num_queries, t.num_layers, t.num_heads, t.embed_dims, t.ffn_dims) == (900, 6, 8, 256, 1024)
    assert (m.aqr.strength, m.aqr.bev_window, m.aqr.init_logit) == (5.0, 15, 1.5)


def test_base_inheritance_and_overrides(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {CONFIG_DIR / 'tiny.yaml'}\nmodel:\n  aqr:\n    strength: 2.5\n")
    cfg = load_config(child, overrides=["model.aqr.mode=local", "train.epochs=3"])
    assert cfg.model.aqr.strength == 2.5
    assert cfg.model.aqr.mode == "local"
    assert cfg.train.epochs == 3
    # untouched keys come from the base chain (tiny -> r50)
    assert cfg.model.transformer.num_queries == 200
    assert cfg.model.aqr.bev_window == 15


@pytest.mark.parametrize("override, key, words", [
    ("model.transformer.num_queries=-5", "model.transformer.num_queries", "greater than 0"),
    ("model.aqr.strenght=3", "model.aqr.strenght", "unknown key"),
    ("node.device=gpu", "node.device", "pattern"),
    ("model.aqr.mode=everywhere", "model.aqr.mode", "'global' or 'local'"),
    ("train.lr=fast", "train.lr", "valid number"),
    ("model.aqr.bev_window=14", "model.aqr", "odd"),
    ("train.aug_scale=[1.1,0.9]", "train", "low <= high"),
])
def test_errors_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides=[override])
    text = str(err.value)
    assert key in text and words in text, text


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"num_views": 0, "bogus": 1}, "eval": {"min_recall": 2}})
    text = str(err.value)
    for key in ("model.num_views", "model.bogus", "eval.min_recall"):
        assert key in text


def test_inconsistent_geometry_is_rejected():
    with pytest.raises(ConfigError, match="bev_size"):
        load_config("tiny", overrides=["model.bev_size=65"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config("tiny")
    out = tmp_path / "dump.yaml"
    out.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(out) == cfg


def test_defaults_equal_the_r50_file():
    # ModelConfig() defaults are the vehicle model; the YAML restates them for readers.
    assert load_config("cmt_aqr_r50_800x320").model == ModelConfig()


def test_every_shipped_model_config_loads_and_builds_its_model():
    """config/*.yaml (the parameter files aside): each validates and its model is built, so
    a README command naming one cannot fail on the config itself."""
    from aqr_perception.model.detector import CmtAqrDetector

    configs = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.endswith(".param.yaml"))
    assert {p.name for p in configs} >= {"tiny.yaml", "cmt_aqr_r50_800x320.yaml", "cmt_aqr_r50_800x320_nuscenes.yaml",
                                         "tiny_nuscenes.yaml"}
    for path in configs:
        model = CmtAqrDetector(load_config(path).model)
        assert sum(p.numel() for p in model.parameters()) > 0, path.name
        del model
