"""The service's version: the installed distribution's, else pyproject.toml's (a checkout run in place).

One source for what ``/models``, the ``X-Service-Version`` header and the OpenAPI page report, so
they cannot drift from the package (``app.py`` used to hard-code "0.1.0").
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from functools import lru_cache
from pathlib import Path

DISTRIBUTION = "deepfake-service"
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@lru_cache(maxsize=1)
def service_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return str(tomllib.loads(_PYPROJECT.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"
