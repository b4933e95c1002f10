"""Find the engines to serve in a Triton-style model repository.

``<repository>/<model>/<version>/{model.onnx, manifest.json}`` (TensorRT plans for particular GPUs may lie
beside the ONNX file, see :mod:`service.pipeline.tensorrt_engine`); the highest integer
version of each model wins unless the caller pins one (``DFS_MODEL_VERSIONS=ftcn:2``: a rollback, or
a version folder that only some machines should serve). Anything malformed is reported with the
path, never skipped silently:
a model the operator asked for that cannot be found keeps the service unhealthy.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from export.manifest import MANIFEST_NAME, Manifest
from service.pipeline.failures import DfsFailure


class RepositoryError(DfsFailure):
    pass


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    folder: Path
    manifest: Manifest

    @property
    def engine_path(self) -> Path:
        return self.folder / self.manifest.file


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (an engine is tens of MB; it is never held whole for this).

    Memoised by path, size and modification time: start-up asks for the same engine's digest for the
    CPU engine choice's key and again for ``/models``.
    """
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size, mtime_ns: part of the cache key only
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _versions(model_dir: Path) -> list[Path]:
    """The version folders of a model that hold a manifest, lowest first."""
    found = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / MANIFEST_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name))


def _pinned_version(model_dir: Path, version: int) -> Path:
    folder = model_dir / str(version)
    if not (folder / MANIFEST_NAME).is_file():
        there = ", ".join(p.name for p in _versions(model_dir)) or "none"
        raise RepositoryError(
            f"{model_dir.name} is pinned to version {version}, which {model_dir} does not hold "
            f"(versions there: {there})"
        )
    return folder


def discover(
    repository: Path, wanted: list[str] | None = None, pins: Mapping[str, int] | None = None
) -> dict[str, ModelVersion]:
    """Latest version of every model (or of ``wanted`` ones, which must all exist); ``pins`` name the
    version a model must serve instead, and must name models the repository holds."""
    pins = pins or {}
    if not repository.is_dir():
        raise RepositoryError(
            f"model repository {repository} does not exist; export a model into it with "
            "`python -m export --model ftcn --checkpoint ftcn_tt.pth --out {repository}`"
        )
    found: dict[str, ModelVersion] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        if wanted and model_dir.name not in wanted:
            continue
        if model_dir.name in pins:
            folder = _pinned_version(model_dir, pins[model_dir.name])
        else:
            versions = _versions(model_dir)
            if not versions:
                continue
            folder = versions[-1]
        try:
            manifest = Manifest.read(folder)
        except ValueError as exc:
            raise RepositoryError(f"{folder / MANIFEST_NAME} is not a valid manifest: {exc}") from exc
        if manifest.name != model_dir.name:
            raise RepositoryError(f"{folder}: manifest names model {manifest.name!r}, folder says {model_dir.name!r}")
        if not (folder / manifest.file).is_file():
            raise RepositoryError(f"{folder}: engine file {manifest.file} is missing")
        found[manifest.name] = ModelVersion(manifest.name, int(folder.name), folder, manifest)
    unknown = sorted(set(pins) - {p.name for p in repository.iterdir() if p.is_dir()})
    if unknown:
        raise RepositoryError(f"versions are pinned for models {repository} does not hold: {', '.join(unknown)}")
    missing = sorted(set(wanted or []) - set(found))
    if missing:
        raise RepositoryError(f"models not found in {repository}: {', '.join(missing)}")
    if not found:
        raise RepositoryError(
            f"no models in {repository}; export one with `python -m export --model ftcn --out {repository} ...`"
        )
    return found
