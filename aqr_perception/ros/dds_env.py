"""Keep DDS on this host unless the user explicitly chose otherwise.

Every entry point that creates an rclpy context calls :func:`apply_loopback_dds_defaults`
before ``rclpy.init``. On a development machine or in CI ``scripts/env.sh`` has already
set the same variables; this is the safety net for a forgotten ``source``.

On a vehicle, set ``ROS_AUTOMATIC_DISCOVERY_RANGE`` (e.g. ``SUBNET``) explicitly to let
the node talk to other hosts: an explicit choice is always respected.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator, MutableMapping
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


DOMAIN_VAR = "ROS_DOMAIN_ID"
#: domains handed to runs that keep to themselves (Linux: ids up to 101 keep DDS's ports
#: below the ephemeral range); 0, the shell's default, is left to the user's graph
PRIVATE_DOMAINS = range(1, 102)


@contextlib.contextmanager
def private_domain(environ: MutableMapping[str, str] | None = None) -> Iterator[tuple[int, bool]]:
    """A ROS domain of its own for a self-contained run (an evaluation replay, the demo), so
    that two runs on one host never see each other's nodes: yields (domain, chosen_here).

    An explicit ``ROS_DOMAIN_ID`` in the environment is the user's choice and is kept
    (chosen_here False). Otherwise the first free id of :data:`PRIVATE_DOMAINS`, starting
    at one derived from the process id, is held with an exclusive lock file for the run
    (other processes of the project skip it) and set in the environment; both are undone
    afterwards. Set before ``rclpy.init`` and before starting the node process.
    """
    env = os.environ if environ is None else environ
    if env.get(DOMAIN_VAR, "").strip():
        yield int(env[DOMAIN_VAR]), False
        return
    locks = Path(tempfile.gettempdir()) / "aqr_perception_domains"
    locks.mkdir(exist_ok=True)
    n = len(PRIVATE_DOMAINS)
    for k in range(n):
        domain = PRIVATE_DOMAINS[(os.getpid() + k) % n]
        fh = open(locks / f"{domain}.lock", "w")  # noqa: SIM115 (held for the run)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        env[DOMAIN_VAR] = str(domain)
        try:
            yield domain, True
        finally:
            env.pop(DOMAIN_VAR, None)
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
        return
    raise RuntimeError(f"no free ROS domain among {PRIVATE_DOMAINS.start}-{PRIVATE_DOMAINS.stop - 1} "
                       f"(lock files in {locks}); set {DOMAIN_VAR}")
