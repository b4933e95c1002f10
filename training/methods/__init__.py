"""Training recipes, one module per detector, named as the model registry names the model it trains."""

from __future__ import annotations

import importlib

from models.registry import list_models
from training.methods.base import Method

#: every registered detector has a training method of the same name (``training/methods/<name>.py``)
METHOD_NAMES = list_models()


def method_class(name: str) -> type[Method]:
    """The Method subclass for ``name`` (imported on demand: each pulls in its own model)."""
    if name not in METHOD_NAMES:
        raise KeyError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    module = importlib.import_module(f"training.methods.{name}")
    classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Method) and c is not Method]
    return next(c for c in classes if getattr(c, "name", None) == name)
