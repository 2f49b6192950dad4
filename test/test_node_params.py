"""The node declares exactly NodeConfig's parameters and validates what it receives."""
import pytest
import yaml
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from aqr_perception.config import ConfigError, NodeConfig
from aqr_perception.ros.node import _make_node_class
from aqr_perception.ros.params import iter_parameters


def _node(ctx, *cli):
    return _make_node_class()(context=ctx, cli_args=["--ros-args", *cli] if cli else None)


def test_every_nodeconfig_field_is_a_declared_parameter(ros_context):
    node = _node(ros_context)
    try:
        names = {name for name, _, _ in iter_parameters()}
        declared = set(node._parameters) - {"use_sim_time", "start_type_description_service"}
        assert declared == names
        desc = node.describe_parameter("sync.image_buffer_size")
        assert desc.type == ParameterType.PARAMETER_INTEGER
        assert (desc.integer_range[0].from_value, desc.integer_range[0].to_value) == (1, 64)
        assert node.describe_parameter("camera_names").type == ParameterType.PARAMETER_STRING_ARRAY
        assert node.cfg == NodeConfig()
    finally:
        node.destroy_node()


def test_param_file_values_reach_the_config(ros_context, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "lidar_topic": "/sensing/lidar/points", "camera_names": ["c0", "c1", "c2", "c3", "c4", "c5"],
        "sync": {"max_image_age_s": 0.05, "camera_time_offsets_s": [0.01, -0.02, 0.0, 0.0, 0.0, 0.03]}}}}))
    node = _node(ros_context, "--params-file", str(f))
    try:
        assert node.cfg.lidar_topic == "/sensing/lidar/points"
        assert node.cfg.camera_names == ["c0", "c1", "c2", "c3", "c4", "c5"]
        assert node.cfg.sync.max_image_age_s == 0.05
        assert node.cfg.sync.camera_time_offsets_s == [0.01, -0.02, 0.0, 0.0, 0.0, 0.03]
    finally:
        node.destroy_node()


def test_invalid_value_is_a_config_error_naming_the_parameter(ros_context):
    with pytest.raises(ConfigError, match="device"):
        _node(ros_context, "-p", "device:=gpu0")
    with pytest.raises(ConfigError, match="camera_names lists 2 cameras"):
        _node(ros_context, "-p", "camera_names:=[a,b]")


def test_runtime_change_refused_with_reason_unless_supported(ros_context):
    node = _node(ros_context)
    try:
        ok = node.set_parameters([Parameter("score_threshold", value=0.5)])[0]
        assert ok.successful and node.cfg.score_threshold == 0.5
        bad = node.set_parameters([Parameter("score_threshold", value=1.5)])[0]
        assert not bad.successful and node.cfg.score_threshold == 0.5
        refused = node.set_parameters([Parameter("lidar_topic", value="/other")])[0]
        assert not refused.successful and "restart" in refused.reason
        assert node.get_parameter("lidar_topic").value == "/LIDAR_TOP"
    finally:
        node.destroy_node()
