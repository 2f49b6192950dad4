"""The node's ROS parameter file, its JSON schema, and NodeConfig agree."""
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from aqr_perception.config import ConfigError, NodeConfig, node_config_from_param_file, node_param_schema

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "schema" / "aqr_perception.schema.json"
PARAM_FILES = sorted((REPO / "config").glob("*.param.yaml"))


def test_committed_schema_is_generated_from_nodeconfig():
    assert json.loads(SCHEMA.read_text()) == node_param_schema(), \
        "schema/ is stale: run `aqr-perception config schema --write`"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_param_files_validate_against_schema(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), json.loads(SCHEMA.read_text()))
    node_config_from_param_file(path)


def test_shipped_param_file_restates_every_parameter():
    params = yaml.safe_load((REPO / "config" / "aqr_perception.param.yaml").read_text())["/**"]["ros__parameters"]
    assert NodeConfig.model_validate(params) == NodeConfig()
    assert set(params) == set(NodeConfig.model_fields)


@pytest.mark.parametrize("mutate, key", [
    (lambda p: p.update(score_threshold=1.5), "score_threshold"),
    (lambda p: p.update(qos_depth="two"), "qos_depth"),
    (lambda p: p.update(unknown_param=1), "unknown_param"),
    (lambda p: p["sync"].update(image_buffer_size=0), "image_buffer_size"),
])
def test_bad_param_file_fails_schema_and_loader(tmp_path, mutate, key):
    doc = yaml.safe_load((REPO / "config" / "aqr_perception.param.yaml").read_text())
    mutate(doc["/**"]["ros__parameters"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    bad = tmp_path / "bad.param.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=key):
        node_config_from_param_file(bad)
