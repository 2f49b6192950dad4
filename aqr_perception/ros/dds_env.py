"""Keep DDS on this host unless the user explicitly chose otherwise.

Every entry point that creates an rclpy context calls :func:`apply_loopback_dds_defaults`
before ``rclpy.init``. On a development machine or in CI ``scripts/env.sh`` has already
set the same variables; this is the safety net for a forgotten ``source``.

On a vehicle, set ``ROS_AUTOMATIC_DISCOVERY_RANGE`` (e.g. ``SUBNET``) explicitly to let
the node talk to other hosts: an explicit choice is always respected.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

#: Fast DDS profile with shared memory + loopback-only UDP transports.
LOOPBACK_PROFILE = Path(__file__).with_name("fastdds_loopback.xml")

RANGE_VAR = "ROS_AUTOMATIC_DISCOVERY_RANGE"
PROFILE_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"


def apply_loopback_dds_defaults(environ: MutableMapping[str, str] | None = None) -> str:
    """Set loopback-only DDS discovery where the environment names no discovery range.

    Args:
        environ: environment to edit (``os.environ`` by default; must be set before
            ``rclpy.init`` to take effect).

    Returns:
        A one-line description of the DDS setting now in force, for the startup log.
    """
    env = os.environ if environ is None else environ
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    chosen = env.get(RANGE_VAR)
    if chosen:
        profile = env.get(PROFILE_VAR, "")
        return f"DDS discovery range {chosen} (set by the environment){', profile ' + profile if profile else ''}"
    if PROFILE_VAR not in env and LOOPBACK_PROFILE.is_file():
        # SYSTEM_DEFAULT makes rmw_fastrtps keep the profile's transports (SHM + loopback UDP);
        # LOCALHOST would replace them with its own UDP-only loopback setup.
        env[PROFILE_VAR] = str(LOOPBACK_PROFILE)
        env[RANGE_VAR] = "SYSTEM_DEFAULT"
        return f"DDS on this host only: shared memory + loopback UDP ({LOOPBACK_PROFILE.name})"
    # A user profile of unknown content, or no profile file: let rmw restrict to localhost.
    env[RANGE_VAR] = "LOCALHOST"
    return "DDS on this host only: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
