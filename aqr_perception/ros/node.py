"""The aqr_perception ROS 2 node (executable ``aqr_perception_node``).

Current state: declares and validates its parameters (NodeConfig), refuses runtime
changes it cannot apply, and reports on /diagnostics. The sensor pipeline (sync,
conversion, the detector, Detection3DArray/MarkerArray/QueryRouting outputs) is
added by the node issue on top of this skeleton.
"""
from __future__ import annotations

import sys

from aqr_perception.ros.dds_env import apply_loopback_dds_defaults

NODE_NAME = "aqr_perception"
#: Parameters that can change at runtime; everything else needs a restart.
RUNTIME_MUTABLE = frozenset({"score_threshold", "max_detections", "max_processing_time_ms",
                             "max_consecutive_delay_ms", "publish_markers"})


def _make_node_class():  # rclpy is imported lazily so that `--help` works without a context
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.node import Node

    from aqr_perception.ros.params import declare_node_parameters, node_config_from_parameters

    class AqrPerceptionNode(Node):
        """Parameters + diagnostics; see the module docstring for what is still missing."""

        def __init__(self, **kwargs) -> None:
            super().__init__(NODE_NAME, **kwargs)
            declare_node_parameters(self)
            self.cfg = node_config_from_parameters(self)
            self.add_on_set_parameters_callback(self._on_set_parameters)
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._diag_timer = self.create_timer(self.cfg.diagnostics_period_s, self._publish_diagnostics)
            self.get_logger().info(
                f"parameters ok: lidar={self.cfg.lidar_topic} cameras={','.join(self.cfg.camera_names)} "
                f"device={self.cfg.device}")

        def _on_set_parameters(self, params) -> SetParametersResult:
            refused = [p.name for p in params if p.name not in RUNTIME_MUTABLE]
            if refused:
                return SetParametersResult(
                    successful=False,
                    reason=f"{', '.join(refused)} cannot change at runtime: restart the node with new parameters")
            return SetParametersResult(successful=True)

        def _publish_diagnostics(self) -> None:
            status = DiagnosticStatus(
                level=DiagnosticStatus.WARN, name=f"{self.get_name()}: pipeline",
                hardware_id=self.cfg.device,
                message="sensor pipeline and detector not running yet: this build only validates parameters",
                values=[KeyValue(key="lidar_topic", value=self.cfg.lidar_topic),
                        KeyValue(key="cameras", value=",".join(self.cfg.camera_names))])
            arr = DiagnosticArray(status=[status])
            arr.header.stamp = self.get_clock().now().to_msg()
            self._diag_pub.publish(arr)

    return AqrPerceptionNode


def main(argv: list[str] | None = None) -> int:
    """Run the node until Ctrl-C / SIGTERM (ROS arguments such as --ros-args are honoured)."""
    dds = apply_loopback_dds_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from aqr_perception.config import ConfigError

    rclpy.init(args=sys.argv if argv is None else argv)
    node = None
    try:
        node = _make_node_class()()
        node.get_logger().info(dds)
        rclpy.spin(node)
    except ConfigError as exc:
        print(f"aqr_perception_node: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
