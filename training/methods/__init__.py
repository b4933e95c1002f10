"""Training recipes, one module per detector; ``METHODS`` maps the model name to its class."""

from __future__ import annotations

import importlib

from training.methods.base import Method

_MODULES = {"ftcn": "ftcn", "pcl_i2g": "pcl_i2g", "dcl": "dcl", "lib": "lib", "advgame": "advgame"}


def method_class(name: str) -> type[Method]:
    """The Method subclass for ``name`` (imported on demand: each pulls in its own model)."""
    if name not in _MODULES:
        raise KeyError(f"unknown method {name!r}; choose from {', '.join(_MODULES)}")
    module = importlib.import_module(f"training.methods.{_MODULES[name]}")
    classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Method) and c is not Method]
    return next(c for c in classes if getattr(c, "name", None) == name)


METHOD_NAMES = list(_MODULES)
