"""What ``ros2 launch PACKAGE FILE name:=value ...`` makes of a launch file, without ROS 2's
``launch`` / ``launch_ros`` (not on PyPI): a stand-in for the parts of them our launch file
uses, with their documented semantics, so that a test can evaluate the file and start the
processes it describes.

- ``DeclareLaunchArgument(name, default_value=...)``: the argument's value unless given;
- ``LaunchConfiguration(name)``: that value (an undeclared, ungiven one is an error);
- ``PythonExpression([...])``: ``str(eval(...))`` of the joined, substituted text;
- ``IfCondition`` / ``UnlessCondition``: "true"/"1" and "false"/"0", any case; anything
  else is an error (launch's ``evaluate_condition_expression``);
- ``launch_ros.actions.Node``: the command ``<executable> --ros-args -r __node:=<name>
  -r __ns:=/<namespace> --params-file F ...``, each parameters entry in order: a path as it
  is, a dict written to a temporary file as ``{"/**": {"ros__parameters": ...}}`` with each
  substituted value read as YAML (launch_ros' ``evaluate_parameter_dict``: "true" -> True).

``get_package_share_directory`` is the real one (ament_index_python) over a prefix that
the caller builds.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import yaml


class _Context:
    def __init__(self, given: dict[str, str]) -> None:
        self.values = dict(given)


def _perform(value, ctx: _Context) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "".join(_perform(v, ctx) for v in value)
    return value.perform(ctx)


class LaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, ctx: _Context) -> str:
        if self.name not in ctx.values:
            raise KeyError(f"launch configuration {self.name!r} is not set")
        return ctx.values[self.name]


class PythonExpression:
    def __init__(self, expression) -> None:
        self.expression = list(expression)

    def perform(self, ctx: _Context) -> str:
        return str(eval(_perform(self.expression, ctx), {}))  # noqa: S307 - what launch does


def _condition(predicate, ctx: _Context) -> bool:
    text = _perform(predicate, ctx).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"condition expression {text!r} is not true/false/1/0")


class IfCondition:
    def __init__(self, predicate) -> None:
        self.predicate = predicate

    def holds(self, ctx: _Context) -> bool:
        return _condition(self.predicate, ctx)


class UnlessCondition(IfCondition):
    def holds(self, ctx: _Context) -> bool:
        return not _condition(self.predicate, ctx)


class DeclareLaunchArgument:
    def __init__(self, name: str, default_value: str | None = None, description: str = "") -> None:
        self.name, self.default_value, self.description = name, default_value, description


class Node:
    def __init__(self, package: str, executable: str, name: str | None = None, namespace="", parameters=(),
                 condition=None, **_output_options) -> None:
        self.package, self.executable, self.name, self.namespace = package, executable, name, namespace
        self.parameters, self.condition = list(parameters), condition

    def command(self, ctx: _Context, executables: dict[tuple[str, str], list[str]], tmp: Path) -> list[str]:
        args = ["--ros-args"]
        if self.name is not None:
            args += ["-r", f"__node:={_perform(self.name, ctx)}"]
        namespace = _perform(self.namespace, ctx)
        args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
        for k, entry in enumerate(self.parameters):
            if isinstance(entry, dict):
                values = {key: (yaml.safe_load(_perform(v, ctx)) if not isinstance(v, (bool, int, float)) else v)
                          for key, v in entry.items()}
                path = tmp / f"launch_params_{k}.yaml"
                path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
                args += ["--params-file", str(path)]
            else:
                args += ["--params-file", _perform(entry, ctx)]
        return [*executables[(self.package, self.executable)], *args]


class LaunchDescription:
    def __init__(self, entities) -> None:
        self.entities = list(entities)


def _stub_modules() -> dict[str, types.ModuleType]:
    def module(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    return {"launch": module("launch", LaunchDescription=LaunchDescription),
            "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument),
            "launch.conditions": module("launch.conditions", IfCondition=IfCondition,
                                        UnlessCondition=UnlessCondition),
            "launch.substitutions": module("launch.substitutions", LaunchConfiguration=LaunchConfiguration,
                                           PythonExpression=PythonExpression),
            "launch_ros": module("launch_ros"),
            "launch_ros.actions": module("launch_ros.actions", Node=Node)}


@contextlib.contextmanager
def _launch_modules():
    stubs = _stub_modules()
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def launch_commands(launch_file: Path, arguments: dict[str, str],
                    executables: dict[tuple[str, str], list[str]], tmp: Path | None = None) -> list[list[str]]:
    """The command lines of the processes ``ros2 launch`` would start for ``launch_file``
    with ``arguments`` (``name:=value``); ``executables`` maps (package, executable) to the
    command that runs it (``ros2 run`` finds ``lib/<package>/<executable>``)."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix="launch_"))
    with _launch_modules():
        spec = importlib.util.spec_from_file_location("launch_under_test", launch_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
    ctx = _Context(arguments)
    for e in description.entities:
        if isinstance(e, DeclareLaunchArgument) and e.name not in ctx.values and e.default_value is not None:
            ctx.values[e.name] = _perform(e.default_value, ctx)
    return [e.command(ctx, executables, tmp) for e in description.entities
            if isinstance(e, Node) and (e.condition is None or e.condition.holds(ctx))]
