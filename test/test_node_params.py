"""The node declares exactly NodeConfig's parameters and validates what it receives."""
import pytest
import yaml
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from aqr_perception.config import ConfigError, NodeConfig
from aqr_perception.ros.node import AqrPerceptionNode, start_node
from aqr_perception.ros.params import iter_parameters

#: parameters of the node process itself, not of NodeConfig
PROCESS_PARAMETERS = {"use_sim_time", "start_type_description_service", "autostart"}


def _node(ctx, *cli):
    """The node driven to active, as its process does with autostart."""
    node = AqrPerceptionNode(context=ctx, cli_args=["--ros-args", *cli] if cli else None)
    try:
        start_node(node)
    except BaseException:
        node.destroy_node()
        raise
    return node


def test_every_nodeconfig_field_is_a_declared_parameter(ros_context):
    node = _node(ros_context)
    try:
        names = {name for name, _, _ in iter_parameters()}
        declared = set(node._parameters) - PROCESS_PARAMETERS
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
        assert "score_threshold" in bad.reason and "1.5" in bad.reason and "\n" not in bad.reason   # names the field
        zero = node.set_parameters([Parameter("max_processing_time_ms", value=0.0)])[0]
        assert not zero.successful and "max_processing_time_ms" in zero.reason
        # rclpy alone would answer "expected '3' got '2'" and "undeclared parameter(s): []"
        wrong_type = node.set_parameters([Parameter("score_threshold", value=1)])[0]
        assert not wrong_type.successful and node.cfg.score_threshold == 0.5
        assert wrong_type.reason.startswith("score_threshold takes a double, not an integer")
        assert "1.0" in wrong_type.reason
        unknown = node.set_parameters_atomically([Parameter("score_treshold", value=0.4)])
        assert not unknown.successful and "score_treshold" in unknown.reason and "no such parameter" in unknown.reason
        refused = node.set_parameters([Parameter("lidar_topic", value="/other")])[0]
        assert not refused.successful and "read-only" in refused.reason
        assert "restart" in node.describe_parameter("lidar_topic").description
        assert node.get_parameter("lidar_topic").value == "/LIDAR_TOP"
    finally:
        node.destroy_node()


@pytest.mark.slow
def test_parameter_services_answer_for_every_parameter_from_another_process(ros_context):
    """What `ros2 param list/get/describe/set` see: the node runs as its own process and this
    one asks its standard rcl_interfaces services. Every declared parameter is listed, has a
    value (`ros2 param dump` is not empty), and its descriptor's read_only says truthfully
    whether a set is refused."""
    import subprocess
    import sys

    import rclpy
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    expected = {name: default for name, _, default in iter_parameters()}
    proc = subprocess.Popen([sys.executable, "-m", "aqr_perception.ros.node", "--ros-args", "--log-level", "warn"])
    probe = rclpy.create_node("param_probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(probe)
    client = AsyncParameterClient(probe, "/aqr_perception")

    def call(future):
        executor.spin_until_future_complete(future, timeout_sec=20)
        assert future.done(), "no answer from the node's parameter service"
        return future.result()

    try:
        assert client.wait_for_services(timeout_sec=90), "the node's parameter services never appeared"
        listed = set(call(client.list_parameters()).result.names)
        assert listed - PROCESS_PARAMETERS == set(expected)
        names = sorted(expected)
        values = call(client.get_parameters(names)).values
        assert len(values) == len(names)                      # one answer per name, none left out
        for name, value in zip(names, values):
            assert value.type != ParameterType.PARAMETER_NOT_SET, name
            got = parameter_value_to_python(value)
            assert (list(got) if isinstance(expected[name], list) else got) == expected[name], name
        descriptors = {d.name: d for d in call(client.describe_parameters(names)).descriptors}
        assert set(descriptors) == set(names)
        assert descriptors["sync.camera_time_offsets_s"].type == ParameterType.PARAMETER_DOUBLE_ARRAY
        assert descriptors["camera_names"].type == ParameterType.PARAMETER_STRING_ARRAY
        assert descriptors["score_threshold"].type == ParameterType.PARAMETER_DOUBLE
        rng = descriptors["sync.image_buffer_size"].integer_range[0]
        assert (rng.from_value, rng.to_value) == (1, 64)
        assert all(d.description for d in descriptors.values())
        # the README's six runtime parameters, and only they, are writable
        writable = {n for n, d in descriptors.items() if not d.read_only}
        assert writable == {"score_threshold", "max_detections", "max_processing_time_ms",
                            "max_consecutive_delay_ms", "publish_markers", "publish_debug_images"}
        # ...and read_only is the truth: setting each parameter to its own value succeeds
        # exactly when it is not read-only
        results = call(client.set_parameters([ParameterMsg(name=n, value=v) for n, v in zip(names, values)])).results
        for name, res in zip(names, results):
            assert res.successful == (name in writable), (name, res.reason)
        # what `ros2 param set` answers for a typo'd name and for an integer given to a double
        typo, integer = call(client.set_parameters([
            ParameterMsg(name="score_treshold", value=values[names.index("score_threshold")]),
            ParameterMsg(name="score_threshold", value=values[names.index("max_detections")])])).results
        assert not typo.successful and "score_treshold: this node has no such parameter" in typo.reason
        assert not integer.successful and "score_threshold takes a double, not an integer" in integer.reason
    finally:
        executor.shutdown()
        probe.destroy_node()
        proc.terminate()
        proc.wait(timeout=20)
