"""NodeConfig <-> ROS 2 parameters.

Every field of :class:`aqr_perception.config.NodeConfig` is declared as a ROS parameter
(nested sections become dotted names, ``sync.max_image_age_s``) with its description
and, where the config states both bounds, an integer/floating-point range. The values
the node receives (parameter file, launch arguments) are read back and validated by
the same pydantic model, so the node and the CLI accept exactly the same settings.

Every parameter has a value from the start (``ros2 param dump`` / ``get`` list them all)
and its descriptor says whether it can change at runtime (``read_only``).
"""
from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
from pydantic import BaseModel
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter

from aqr_perception.config import ConfigError, NodeConfig, format_validation_error

#: Parameters that can change at runtime; every other one is read-only (restart to change it).
RUNTIME_MUTABLE = frozenset({"score_threshold", "max_detections", "max_processing_time_ms",
                             "max_consecutive_delay_ms", "publish_markers", "publish_debug_images"})

_SCALAR_TYPES = {bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER,
                 float: Parameter.Type.DOUBLE, str: Parameter.Type.STRING}
_ARRAY_TYPES = {bool: Parameter.Type.BOOL_ARRAY, int: Parameter.Type.INTEGER_ARRAY,
                float: Parameter.Type.DOUBLE_ARRAY, str: Parameter.Type.STRING_ARRAY}


def _base_type(annotation: Any) -> Any:
    """Strip Annotated[...] wrappers; Literal[...] -> the type of its values."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return annotation


def _ros_type(annotation: Any) -> Parameter.Type:
    ann = _base_type(annotation)
    if typing.get_origin(ann) is list:
        return _ARRAY_TYPES[_base_type(typing.get_args(ann)[0])]
    return _SCALAR_TYPES[ann]


def iter_parameters(model: type[BaseModel] = NodeConfig, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield ``(dotted_name, pydantic FieldInfo, default)`` for every leaf field."""
    defaults = model()
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from iter_parameters(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info, getattr(defaults, name)


def descriptor_for(name: str, info: Any) -> ParameterDescriptor:
    """ParameterDescriptor with type, description, read-only flag and (when both bounds are
    known) range."""
    read_only = name not in RUNTIME_MUTABLE
    text = (info.description or "") + (" (read-only: restart the node to change it)" if read_only else "")
    desc = ParameterDescriptor(name=name, type=int(_ros_type(info.annotation)), description=text,
                               read_only=read_only)
    lo = hi = None
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            lo = meta.ge
        elif isinstance(meta, annotated_types.Le):
            hi = meta.le
        elif isinstance(meta, annotated_types.Gt):
            desc.additional_constraints = f"> {meta.gt}"
    if lo is not None and hi is not None:
        if desc.type == Parameter.Type.INTEGER:
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif desc.type == Parameter.Type.DOUBLE:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def declare_node_parameters(node: Node) -> list[str]:
    """Declare every NodeConfig field on ``node`` (defaults from NodeConfig).

    A given value of the wrong type or out of range is a ConfigError naming the parameter.
    Returns the names given (parameter file, ``-p``) that the node does not have: typos
    such as ``score_treshold``, which rclpy would ignore without a word."""
    for name, info, default in iter_parameters():
        try:
            _declare(node, name, descriptor_for(name, info), default)
        except ParameterException as exc:
            hint = ""
            if isinstance(exc, InvalidParameterTypeException) and "'INTEGER', expecting type 'DOUBLE'" in str(exc):
                hint = " (write a double with a decimal point, e.g. 1.0)"
            raise ConfigError(f"parameter {name}: {str(exc).rsplit(': ' + name, 1)[0]}{hint}") from None
    return sorted(n for n in node._parameter_overrides if not node.has_parameter(n))


def _declare(node: Node, name: str, desc: ParameterDescriptor, default: Any) -> None:
    if isinstance(default, list) and not default:
        # rclpy types an empty list as a byte array, and a parameter declared by type alone
        # stays unset: get_parameters answers nothing for it and `ros2 param dump` prints
        # nothing. Declared by type, it takes a parameter file's value; without one it gets
        # the typed empty default (rclpy has no public call for that on a read-only one).
        ptype = Parameter.Type(desc.type)
        node.declare_parameter(name, ptype, desc)
        if node._parameters[name].type_ == Parameter.Type.NOT_SET:
            node._parameters[name] = Parameter(name, ptype, [])
    else:
        node.declare_parameter(name, default, desc)


def _type_name(ptype: Parameter.Type) -> str:
    """``Parameter.Type.INTEGER`` -> "an integer", ``DOUBLE_ARRAY`` -> "a double array"."""
    name = ptype.name.lower().replace("_", " ")
    return ("an " if name[0] in "aeiou" else "a ") + name


def set_refusal(node: Node, params: list[Parameter]) -> str | None:
    """Why a runtime set of ``params`` is refused, in words, or None to let rclpy decide.

    rclpy's own reasons for the two commonest mistakes are unreadable: an undeclared name
    gives "Invalid access to undeclared parameter(s): []" (the list is an exhausted
    generator) and a wrong type "expected '3' got '4'" (Python 3.11 formats an IntEnum as
    its number). These are answered first, naming the parameter and the types."""
    for p in params:
        if not node.has_parameter(p.name):
            return (f"{p.name}: this node has no such parameter "
                    "(`ros2 param list /aqr_perception` shows the names)")
        want = Parameter.Type(node.describe_parameter(p.name).type)
        if p.type_ not in (want, Parameter.Type.NOT_SET):
            hint = " (write a double with a decimal point, e.g. 1.0)" \
                if (want, p.type_) == (Parameter.Type.DOUBLE, Parameter.Type.INTEGER) else ""
            return f"{p.name} takes {_type_name(want)}, not {_type_name(p.type_)}{hint}"
    return None


def node_config_from_parameters(node: Node) -> NodeConfig:
    """Read the declared parameters back into a validated NodeConfig (ConfigError if bad)."""
    data: dict[str, Any] = {}
    for name, _info, _default in iter_parameters():
        value = node.get_parameter(name).value
        if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
            value = list(value)
        cursor = data
        *parents, leaf = name.split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = value
    try:
        return NodeConfig.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError
        if hasattr(exc, "errors"):
            raise ConfigError(format_validation_error(exc, "node parameters")) from None
        raise
