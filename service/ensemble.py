"""Which ensemble the service applies, decided once at start-up from the settings and the repository.

Precedence, most explicit first:

1. ``DFS_ENSEMBLE_WEIGHTS`` when set: those weights (unnamed models weigh 1), no bias, as before
   ``ensemble.json`` existed. An operator who types weights means them; the file is ignored and
   the log says so.
2. ``<DFS_MODEL_REPOSITORY>/ensemble.json`` (written by ``python -m export.calibrate --write``):
   its weights and bias, for the models it names at the versions it names.
3. Neither: equal weights, no bias.

A file that does not match what is loaded is applied as far as it still holds, with a warning:
a model it names that is not loaded, or loaded at another version or with another calibration
(re-exported or re-calibrated since the fit: the scores the weights were fitted on have moved),
and a loaded model it does not name are "models it lacks". Those get the mean of
the file's weights of the models that do match (equal to an average fitted model, so a new model
neither swamps nor vanishes from the mean), and the bias is dropped, because it was fitted for
the exact combination the file describes. If no loaded model matches, every model weighs 1.
A malformed file fails loading with its path (``/healthcheck`` says why), like a bad manifest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from export.ensemble import ENSEMBLE_NAME, EnsembleFile
from service.config import Settings
from service.model_repository import ModelVersion, RepositoryError
from service.pipeline.scores import EnsembleWeights

log = logging.getLogger(__name__)

Source = Literal["DFS_ENSEMBLE_WEIGHTS", "ensemble.json", "equal"]


@dataclass(frozen=True)
class ServedEnsemble:
    """The combination applied to every track, and where it came from (served by ``GET /ensemble``)."""

    combination: EnsembleWeights = field(default_factory=EnsembleWeights)
    source: Source = "equal"
    path: str | None = None  # the file read, relative to DFS_MODEL_REPOSITORY (the API names no server paths)
    warnings: tuple[str, ...] = ()
    file: EnsembleFile | None = None

    def describe(self, loaded: list[str]) -> dict[str, Any]:
        """JSON view: the weight of every loaded model, the bias, the source and the file's provenance."""
        combination = self.combination
        return {
            "source": self.source,
            "path": self.path,
            "weights": {name: combination.weight(name) for name in sorted(loaded)},
            "bias": combination.bias,
            "bias_applies_to": sorted(combination.bias_models),
            "warnings": list(self.warnings),
            "fitted": None
            if self.file is None
            else {
                "model_versions": self.file.model_versions,
                "model_calibrations": self.file.model_calibrations,
                "fit": self.file.fit,
                "fitted_on": self.file.fitted_on,
                "metrics": self.file.metrics,
                "created_at": self.file.created_at,
            },
        }


def _mismatch(file: EnsembleFile, name: str, loaded: Mapping[str, ModelVersion], path: str) -> str | None:
    """Why the file's fit does not hold for loaded model ``name`` (None when it does)."""
    version = file.model_versions[name]
    if name not in loaded:
        return f"{path} names model {name} v{version}, which is not loaded"
    model = loaded[name]
    if model.version != version:
        return f"{path} was fitted with {name} v{version}, but v{model.version} is loaded"
    fitted = file.model_calibrations.get(name)
    served = model.manifest.calibration.model_dump()
    if fitted is not None and any(
        not math.isclose(fitted.get(k, math.nan), v, rel_tol=1e-9) for k, v in served.items()
    ):
        return f"{path} was fitted with {name}'s calibration {fitted}, but its manifest now has {served}"
    return None


def from_file(file: EnsembleFile, loaded: Mapping[str, ModelVersion], path: str = ENSEMBLE_NAME) -> ServedEnsemble:
    """Apply ``file`` to the loaded models, the way the module docstring says."""
    problems = {name: _mismatch(file, name, loaded, path) for name in sorted(file.weights)}
    matching = {name: file.weights[name] for name, problem in problems.items() if problem is None}
    warnings = [problem for problem in problems.values() if problem is not None]
    warnings += [
        f"{path} has no weight for loaded model {name} v{model.version}"
        for name, model in sorted(loaded.items())
        if name not in file.weights
    ]
    lacking = sorted(set(loaded) - set(matching))
    if not matching or sum(matching.values()) <= 0:
        weights = {name: 1.0 for name in loaded}
        if warnings:
            warnings.append("the fit holds for no loaded model: equal weights, no bias")
    else:
        fallback = sum(matching.values()) / len(matching)
        weights = {**matching, **{name: fallback for name in lacking}}
        if warnings:
            warnings.append(
                f"no bias; {', '.join(lacking)} weigh(s) the mean fitted weight {fallback:.4g}"
                if lacking
                else "no bias: the fit was made with more models than are loaded"
            )
    exact = not warnings
    combination = EnsembleWeights(
        weights=weights,
        bias=file.bias if exact else 0.0,
        bias_models=frozenset(n for n, w in file.weights.items() if w > 0) if exact else frozenset(),
    )
    return ServedEnsemble(combination, "ensemble.json", path, tuple(warnings), file)


def resolve(settings: Settings, loaded: Mapping[str, ModelVersion]) -> ServedEnsemble:
    """The ensemble to serve for the loaded models (see the module docstring)."""
    path = settings.model_repository / ENSEMBLE_NAME
    if settings.ensemble_weights.strip():
        if path.is_file():
            log.info("DFS_ENSEMBLE_WEIGHTS is set: it overrides %s", path)
        return ServedEnsemble(EnsembleWeights(weights=settings.ensemble_weight_map), "DFS_ENSEMBLE_WEIGHTS")
    try:
        file = EnsembleFile.read(settings.model_repository)
    except ValueError as exc:
        raise RepositoryError(f"{path} is not a valid ensemble file: {exc}") from exc
    if file is None:
        return ServedEnsemble()
    served = from_file(file, loaded)
    for warning in served.warnings:
        log.warning("ensemble (%s): %s", path, warning)
    log.info(
        "ensemble from %s: weights %s, bias %+.4f", path, dict(served.combination.weights), served.combination.bias
    )
    return served
