"""Detector networks, their input specs and checkpoint loading (no I/O beyond weights).

``create_model(name, checkpoint=...)`` and ``get_spec(name)`` (from :mod:`models.registry`) import
every detector module in this package on first use, which registers each with the registry.
Importing the package itself imports only :mod:`models.spec` (no torch): the service reads specs
from manifests and, on a CPU with ONNX Runtime or OpenVINO, never needs torch, whose import alone
holds ~500 MB of resident memory (its CUDA libraries included).
"""

from __future__ import annotations

import importlib
import os as _os
import pkgutil
from typing import Any

# onnxruntime (1.32 on Linux) starts 1DS telemetry DNS lookups ~20 s after a session is created
# unless this is set before the library loads; this service must contact nothing but the URL it
# is asked to fetch, so every package sets it on import (tests/test_offline.py checks the effect).
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"

from models.spec import CropRule, ModelSpec  # noqa: E402

# Modules that hold helpers rather than registered detectors.
_NOT_DETECTORS = {"registry", "spec", "checkpoint", "retinaface", "layers", "backbones"}
_REGISTRY_API = {"create_model", "get_spec", "list_models", "register_model"}


def import_detectors() -> None:
    """Import every detector module here (each registers itself); :mod:`models.registry` calls this."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_DETECTORS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def __getattr__(name: str) -> Any:
    """``models.create_model`` and the rest of the registry's API, imported (with torch) on first use."""
    if name in _REGISTRY_API:
        from models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CropRule", "ModelSpec", "create_model", "get_spec", "import_detectors", "list_models", "register_model"]
