"""Launch the aqr_perception node.

    ros2 launch aqr_perception aqr_perception.launch.py \
        params_file:=/path/to/params.yaml namespace:=perception use_sim_time:=true \
        checkpoint:=/path/to/model.pt

Arguments:
    params_file   ROS parameter file (default: the package's config/aqr_perception.param.yaml)
    namespace     node namespace (default: none)
    use_sim_time  follow /clock, e.g. for bag replay (default: false)
    checkpoint    model checkpoint overriding the parameter file (default: keep the file's)
    autostart     drive the managed node to active by itself (default: true); false leaves
                  it unconfigured for `ros2 lifecycle set` or a lifecycle manager
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "aqr_perception"
EXECUTABLE = "aqr_perception_node"
DEFAULT_PARAMS = "aqr_perception.param.yaml"


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    params_file = LaunchConfiguration("params_file")
    checkpoint = LaunchConfiguration("checkpoint")
    use_sim_time = LaunchConfiguration("use_sim_time")
    autostart = LaunchConfiguration("autostart")
    no_checkpoint = PythonExpression(["'", checkpoint, "' == ''"])

    def node(extra_params, condition):
        return Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name="aqr_perception",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[params_file, {"use_sim_time": use_sim_time, "autostart": autostart}, *extra_params],
            condition=condition,
        )

    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", DEFAULT_PARAMS),
                              description="ROS parameter file of the node"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="model checkpoint; empty keeps the parameter file's"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the managed node at start-up"),
        node([], IfCondition(no_checkpoint)),
        node([{"checkpoint": checkpoint}], UnlessCondition(no_checkpoint)),
    ])
