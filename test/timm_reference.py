"""timm's VoVNet (and ResNet) as independent references for our image backbones.

timm (requirements-nodeps.txt) declares torchvision, and imports it at start-up for its
data transforms and one norm layer that the VoVNet model code does not use. PyPI's
torchvision wheel cannot load beside the CPU torch wheel ("operator torchvision::nms
does not exist"), so this module puts an inert stand-in for ``torchvision`` in
``sys.modules`` before importing timm. Only for the tests: nothing in the package
imports timm.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Inert(type):
    """A class whose every attribute is a placeholder string (enum members such as
    ``InterpolationMode.NEAREST`` that timm reads into lookup tables at import)."""

    def __getattr__(cls, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _InertModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (), {"__init__": lambda self, *a, **k: None})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):  # noqa: ANN001
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: ANN001
        return _InertModule(spec.name)

    def exec_module(self, module) -> None:  # noqa: ANN001
        module.__path__ = []


def timm_vovnet(name: str = "ese_vovnet99b", **kwargs):
    """``timm.create_model(name)`` (random weights, eval mode), torchvision stood in for;
    also serves timm's other models (the ResNet trunk test)."""
    if "timm" not in sys.modules:
        try:
            import torchvision  # noqa: F401  (a working torchvision needs no stand-in)
        except Exception:
            for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                del sys.modules[key]
            sys.meta_path.insert(0, _TorchvisionStandIn())
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
