"""Find the engines to serve in a Triton-style model repository.

``<repository>/<model>/<version>/{model.onnx|model.plan, manifest.json}``; the highest integer
version of each model wins. Anything malformed is reported with the path, never skipped silently:
a model the operator asked for that cannot be found keeps the service unhealthy.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from export.manifest import MANIFEST_NAME, Manifest


class RepositoryError(RuntimeError):
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


def _latest_version(model_dir: Path) -> Path | None:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / MANIFEST_NAME).is_file()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def discover(repository: Path, wanted: list[str] | None = None) -> dict[str, ModelVersion]:
    """Latest version of every model (or of ``wanted`` ones, which must all exist)."""
    if not repository.is_dir():
        raise RepositoryError(
            f"model repository {repository} does not exist; export a model into it with "
            "`python -m export --model ftcn --checkpoint ftcn_tt.pth --out {repository}`"
        )
    found: dict[str, ModelVersion] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        if wanted and model_dir.name not in wanted:
            continue
        folder = _latest_version(model_dir)
        if folder is None:
            continue
        try:
            manifest = Manifest.read(folder)
        except ValueError as exc:
            raise RepositoryError(f"{folder / MANIFEST_NAME} is not a valid manifest: {exc}") from exc
        if manifest.name != model_dir.name:
            raise RepositoryError(f"{folder}: manifest names model {manifest.name!r}, folder says {model_dir.name!r}")
        if not (folder / manifest.file).is_file():
            raise RepositoryError(f"{folder}: engine file {manifest.file} is missing")
        found[manifest.name] = ModelVersion(manifest.name, int(folder.name), folder, manifest)
    missing = sorted(set(wanted or []) - set(found))
    if missing:
        raise RepositoryError(f"models not found in {repository}: {', '.join(missing)}")
    if not found:
        raise RepositoryError(
            f"no models in {repository}; export one with `python -m export --model ftcn --out {repository} ...`"
        )
    return found
