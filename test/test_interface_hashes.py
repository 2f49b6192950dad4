"""The interface stand-ins (``interfaces/``) carry the RIHS01 type hashes of the real packages.

A type's RIHS01 hash covers its field names, types and order, and those of every type it
nests (std_msgs/Header, geometry_msgs/Pose, ...). Every publisher and subscription
advertises it in discovery and rosbag2 records it, so a stand-in whose hash differs from
the real package's is, to the rest of a vehicle's ROS graph, another type (and a field
order that differs also changes the bytes on the wire).

The expected values (``UPSTREAM``) were computed once from the published upstream
``.msg`` files, not from the stand-ins:

* vision_msgs: https://github.com/ros-perception/vision_msgs, tag ``4.1.1`` (commit
  e77fa2d97d69abaaa546592892d2d5d16cec9977, "bumping to 4.1.1 for release"), files
  ``vision_msgs/msg/<Name>.msg``. 4.1.1 is the release the stand-in's package.xml names.
* tf2_msgs: https://github.com/ros2/geometry2, file ``tf2_msgs/msg/TFMessage.msg``, at
  ``rolling`` commit 1b005c6556cf350d7670812ef30eefed8443a759 (tag 0.39.1 line, Oct
  2024; the newest snapshot at hand has no ``kilted`` branch). The file is unchanged
  since commit 5744b19154264be16f66fe808e29d4e89e08fab2 (2010), and rosbags' own Kilted
  type store (``Stores.ROS2_KILTED``, generated from the Kilted distro) gives the same
  hash, which ``test_tf2_msgs_constant_is_the_kilted_definition`` checks here.

How: rosbags 0.11.9, ``get_typestore(Stores.ROS2_KILTED)``, every upstream file of the
package registered with ``get_types_from_msg(text, "vision_msgs/msg/<Name>")``, then
``Typestore.hash_rihs01(name)``. Cross-checked with rosidl's own generator (ros
rosidl_generator_type_description 4.9.5: upstream ``.msg`` -> ``.idl`` with
rosidl_adapter, then ``generate_type_hash`` against the Kilted std_msgs /
geometry_msgs / builtin_interfaces type descriptions of the venv's ROS wheels): same
values. The nested standard types are Kilted's (std_msgs / geometry_msgs 5.5.1,
builtin_interfaces 2.3.0); ``test_nested_standard_types_are_kilted`` checks the installed
ones still are.

What is tested, per stand-in message:
1. the hash in the type description JSON that rosidl generated for the *installed*
   package (``<prefix>/share/<pkg>/msg/<Name>.json``, ``type_hashes``; the prefix is the
   one the imported Python package lives in) equals the upstream constant;
2. the hash rclpy advertises for a publisher of the imported message class (the one
   compiled into the built type support, what discovery sends) equals it too;
3. rosbags' hash of the stand-in's ``.msg`` source equals it (catches an edited stand-in
   before it is rebuilt).
On a vehicle the installed package is the distro's, and 1 and 2 check that one instead.
"""
from __future__ import annotations

import importlib
import json
from functools import lru_cache
from pathlib import Path

import pytest
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

REPO = Path(__file__).resolve().parent.parent
INTERFACES = REPO / "interfaces"

#: RIHS01 of the upstream definitions (sources and method: module docstring)
UPSTREAM = {
    # ros-perception/vision_msgs 4.1.1 (e77fa2d), vision_msgs/msg/*.msg
    "vision_msgs/msg/BoundingBox3D": "RIHS01_bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "vision_msgs/msg/BoundingBox3DArray": "RIHS01_a81938db9576b10c2eecd7c5a5da3eac496efd00221b25ed051dfbc81fb56da6",
    "vision_msgs/msg/Classification": "RIHS01_f74db28d0eaef3afb78f48bf2161cd709a1383a0309d3454383b25be11345143",
    "vision_msgs/msg/Detection3D": "RIHS01_ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "vision_msgs/msg/Detection3DArray": "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    "vision_msgs/msg/LabelInfo": "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "vision_msgs/msg/ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "vision_msgs/msg/ObjectHypothesisWithPose":
        "RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
    "vision_msgs/msg/VisionClass": "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
    "vision_msgs/msg/VisionInfo": "RIHS01_95d3116a17484ad91c9a2686e1d54890bbfc3ff6c6a2de137738c4950d45d284",
    # ros2/geometry2 rolling 1b005c6 (file unchanged since 5744b19), tf2_msgs/msg/TFMessage.msg
    "tf2_msgs/msg/TFMessage": "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087",
}

#: the ROS wheels' packages whose types the stand-ins nest
STANDARD_PACKAGES = ("builtin_interfaces", "std_msgs", "geometry_msgs")


def _stand_ins() -> list[str]:
    """Every stand-in message type, from the .msg files under interfaces/."""
    return sorted(f"{p.parent.parent.name}/msg/{p.stem}" for p in INTERFACES.glob("*/msg/*.msg"))


STAND_INS = _stand_ins()


def _installed_share(package: str) -> Path:
    """share/<package> of the install prefix that ``import <package>`` resolves to."""
    init = Path(importlib.import_module(package).__file__)
    # <prefix>/lib/pythonX.Y/site-packages/<package>/__init__.py
    return init.parents[4] / "share" / package


def _installed_hashes(type_name: str) -> dict[str, str]:
    """type_hashes of the installed type description JSON: {type name: RIHS01}."""
    package, _, name = type_name.split("/")
    path = _installed_share(package) / "msg" / f"{name}.json"
    return {h["type_name"]: h["hash_string"] for h in json.loads(path.read_text())["type_hashes"]}


@lru_cache(maxsize=1)
def _stand_in_store() -> Typestore:
    """rosbags store with the venv's standard types (their .msg files) and the stand-ins' .msg text.

    Built from EMPTY rather than a distro store so that the stand-ins' own text is hashed
    (a distro store already holds a tf2_msgs/TFMessage).
    """
    store = get_typestore(Stores.EMPTY)
    types = {}
    for package in STANDARD_PACKAGES:
        for f in sorted((_installed_share(package) / "msg").glob("*.msg")):
            types.update(get_types_from_msg(f.read_text(), f"{package}/msg/{f.stem}"))
    for f in sorted(INTERFACES.glob("*/msg/*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"{f.parent.parent.name}/msg/{f.stem}"))
    store.register(types)
    return store


def test_every_stand_in_has_an_upstream_constant():
    assert STAND_INS, "no .msg files found under interfaces/"
    assert sorted(UPSTREAM) == STAND_INS


@pytest.mark.parametrize("type_name", STAND_INS)
def test_installed_type_description_hash_is_upstreams(type_name):
    assert _installed_hashes(type_name)[type_name] == UPSTREAM[type_name]


def test_advertised_type_hashes_are_upstreams(ros_context):
    import rclpy

    node = rclpy.create_node("interface_hash_probe", context=ros_context)
    try:
        advertised = {}
        for i, type_name in enumerate(STAND_INS):
            package, _, name = type_name.split("/")
            topic = f"/interface_hash_probe_{i}"
            node.create_publisher(getattr(importlib.import_module(f"{package}.msg"), name), topic, 1)
            advertised[type_name] = str(node.get_publishers_info_by_topic(topic)[0].topic_type_hash)
    finally:
        node.destroy_node()
    assert advertised == {t: UPSTREAM[t] for t in STAND_INS}


@pytest.mark.parametrize("type_name", STAND_INS)
def test_stand_in_source_hash_is_upstreams(type_name):
    assert _stand_in_store().hash_rihs01(type_name) == UPSTREAM[type_name]


def test_nested_standard_types_are_kilted():
    # The constants assume Kilted's std_msgs / geometry_msgs / builtin_interfaces; the
    # installed descriptions of the stand-ins name the nested types' hashes they were built with.
    kilted = get_typestore(Stores.ROS2_KILTED)
    nested = {}
    for type_name in STAND_INS:
        nested.update({t: h for t, h in _installed_hashes(type_name).items() if t.split("/")[0] in STANDARD_PACKAGES})
    assert {"std_msgs/msg/Header", "geometry_msgs/msg/Pose", "geometry_msgs/msg/TransformStamped"} <= set(nested)
    assert nested == {t: kilted.hash_rihs01(t) for t in nested}


def test_tf2_msgs_constant_is_the_kilted_definition():
    assert get_typestore(Stores.ROS2_KILTED).hash_rihs01("tf2_msgs/msg/TFMessage") == UPSTREAM["tf2_msgs/msg/TFMessage"]
