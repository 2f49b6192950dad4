# Source this before anything that creates an rclpy context on a development machine,
# test runner or CI: it keeps all DDS traffic on this host (loopback UDP + shared
# memory) and activates the project's virtual environment when it exists.
#   source scripts/env.sh
# The Python entry points apply the same defaults themselves
# (aqr_perception/ros/dds_env.py), so a forgotten `source` cannot leak traffic.
_AQR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_AQR_PROFILE="$_AQR_ROOT/aqr_perception/ros/fastdds_loopback.xml"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
if [ -f "$_AQR_PROFILE" ]; then
  # SYSTEM_DEFAULT lets rmw_fastrtps keep the profile's loopback/SHM transports.
  export FASTDDS_DEFAULT_PROFILES_FILE="$_AQR_PROFILE"
  export ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT
else
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
fi
export ROS_LOG_DIR="${ROS_LOG_DIR:-$_AQR_ROOT/build/ros_log}"
export AQR_DDS_ENV_APPLIED=1
if [ -x "$_AQR_ROOT/.venv/bin/python" ] && [ "${VIRTUAL_ENV:-}" != "$_AQR_ROOT/.venv" ]; then
  export VIRTUAL_ENV="$_AQR_ROOT/.venv"
  export PATH="$VIRTUAL_ENV/bin:$PATH"
fi
# The venv is this machine's ROS underlay (what /opt/ros/<distro>/setup.bash is on a distro
# install): colcon and CMake find ament, rosidl and the message packages there.
if [ -x "$_AQR_ROOT/.venv/bin/python" ]; then
  for _aqr_var in AMENT_PREFIX_PATH CMAKE_PREFIX_PATH; do
    case ":${!_aqr_var:-}:" in
      *":$_AQR_ROOT/.venv:"*) ;;
      *) export "$_aqr_var=$_AQR_ROOT/.venv${!_aqr_var:+:${!_aqr_var}}" ;;
    esac
  done
  unset _aqr_var
fi
unset _AQR_ROOT _AQR_PROFILE
