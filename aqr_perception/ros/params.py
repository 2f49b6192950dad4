"""NodeConfig <-> ROS 2 parameters.

Every field of :class:`aqr_perception.config.NodeConfig` is declared as a ROS parameter
(nested sections become dotted names, ``sync.max_image_age_s``) with its description
and, where the config states both bounds, an integer/floating-point range. The values
the node receives (parameter file, launch arguments) are read back and validated by
the same pydantic model, so the node and the CLI accept exactly the same settings.
"""
from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
from pydantic import BaseModel
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from aqr_perception.config import ConfigError, NodeConfig, format_validation_error

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
    """ParameterDescriptor with type, description and (when both bounds are known) range."""
    desc = ParameterDescriptor(name=name, type=int(_ros_type(info.annotation)),
                               description=info.description or "", read_only=False)
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


def declare_node_parameters(node: Node) -> None:
    """Declare every NodeConfig field on ``node`` (defaults from NodeConfig)."""
    for name, info, default in iter_parameters():
        desc = descriptor_for(name, info)
        # An empty list cannot carry its element type: declare by type instead.
        value = Parameter.Type(desc.type) if isinstance(default, list) and not default else default
        node.declare_parameter(name, value, desc)


def _is_set(node: Node, name: str) -> bool:
    try:
        return node.get_parameter(name).type_ != Parameter.Type.NOT_SET
    except ParameterUninitializedException:
        return False


def node_config_from_parameters(node: Node) -> NodeConfig:
    """Read the declared parameters back into a validated NodeConfig (ConfigError if bad)."""
    data: dict[str, Any] = {}
    for name, _info, default in iter_parameters():
        # Declared by type (empty-list default) and not set by the user: keep the default.
        value = node.get_parameter(name).value if _is_set(node, name) else default
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
