"""Detector networks, their input specs and checkpoint loading (no I/O beyond weights).

Importing this package imports every model module in it, which registers each detector with
:mod:`models.registry`. Use ``create_model(name, checkpoint=...)`` and ``get_spec(name)``.
"""

from __future__ import annotations

import importlib
import os as _os

# onnxruntime (1.32 on Linux) starts 1DS telemetry DNS lookups ~20 s after a session is created
# unless this is set before the library loads; this service must contact nothing but the URL it
# is asked to fetch, so every package sets it on import (tests/test_offline.py checks the effect).
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import pkgutil  # noqa: E402

from models.registry import create_model, get_spec, list_models, register_model  # noqa: E402
from models.spec import CropRule, ModelSpec  # noqa: E402

# Modules that hold helpers rather than registered detectors.
_NOT_DETECTORS = {"registry", "spec", "retinaface", "layers", "backbones"}

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_DETECTORS and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["CropRule", "ModelSpec", "create_model", "get_spec", "list_models", "register_model"]
