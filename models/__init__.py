"""Detector networks, their input specs and checkpoint loading (no I/O beyond weights).

Importing this package imports every model module in it, which registers each detector with
:mod:`models.registry`. Use ``create_model(name, checkpoint=...)`` and ``get_spec(name)``.
"""

from __future__ import annotations

import importlib
import pkgutil

from models.registry import create_model, get_spec, list_models, register_model
from models.spec import CropRule, ModelSpec

# Modules that hold helpers rather than registered detectors.
_NOT_DETECTORS = {"registry", "spec", "retinaface", "layers", "backbones"}

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_DETECTORS and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["CropRule", "ModelSpec", "create_model", "get_spec", "list_models", "register_model"]
