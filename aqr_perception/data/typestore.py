"""A rosbags typestore that knows every message type the project reads or writes.

ROS 2 Kilted's standard types come with rosbags; ``vision_msgs`` (where the stand-in is
used) and this package's own messages are registered from their ``.msg`` files, found
in the source checkout or, in a colcon install, in the packages' share directories.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

_REPO = Path(__file__).resolve().parents[2]


def _msg_dir(package: str, source: Path) -> Path | None:
    if source.is_dir():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(package)) / "msg"
        return share if share.is_dir() else None
    except Exception:
        return None


@lru_cache(maxsize=1)
def project_typestore() -> Typestore:
    """Kilted types + vision_msgs + aqr_perception messages (cached)."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for package, source in (("vision_msgs", _REPO / "interfaces" / "vision_msgs" / "msg"),
                            ("aqr_perception", _REPO / "msg")):
        folder = _msg_dir(package, source)
        if folder is None:
            raise FileNotFoundError(f"no .msg files found for {package} (looked in {source} and the ament index)")
        for f in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(f.read_text(), f"{package}/msg/{f.stem}"))
    store.register(types)
    return store
