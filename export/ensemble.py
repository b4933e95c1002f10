"""``ensemble.json``: how a model repository's models combine, fitted on held-out videos.

One file at the repository root, beside the ``<model>/<version>/`` folders: the weights and the bias
of the ensemble formula (``service/pipeline/scores.py``), the model versions they were fitted
with, and where the fit came from (command, label list and its sha256, videos, metrics). Like a
manifest, it is written by export (``python -m export.calibrate --write``) and read by the
service at start-up (``service/ensemble.py``), so the combination served is the one measured,
not one typed into an environment variable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from export.errors import ExportInputError

ENSEMBLE_NAME = "ensemble.json"


class EnsembleFile(BaseModel):
    """The repository's ensemble: ``P = sigmoid(sum_m w_m * logit(p_m) / sum_m w_m + bias)``."""

    format: int = Field(1, description="Version of this layout.")
    weights: dict[str, float] = Field(..., description="Weight per model name, >= 0, normalised to sum 1.")
    bias: float = Field(0.0, description="Added to the weighted mean logit (fitted: FAKE at 0.5 = equal-error point).")
    threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="sigmoid(-bias): where the unbiased weighted mean would have to be set to decide the same "
        "(informational; the service applies the bias and keeps its own DFS_THRESHOLD).",
    )
    model_versions: dict[str, int] = Field(..., description="The version of each model the fit saw.")
    model_calibrations: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Each model's manifest calibration the fit saw: a later re-calibration keeps the version but "
        "moves the scores the weights and bias were fitted on, so the service checks both.",
    )
    fit: dict[str, Any] = Field(default_factory=dict, description="Method, regularisation, raw coefficients.")
    fitted_on: dict[str, Any] = Field(default_factory=dict, description="Command, labels + sha256, split, videos.")
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Video metrics of the fitted and equal ensembles."
    )
    created_at: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleFile:
        if not self.weights:
            raise ExportInputError("no weights")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ExportInputError(f"weights must be >= 0 with a positive sum, not {self.weights}")
        if set(self.model_versions) != set(self.weights):
            raise ExportInputError(
                f"model_versions names {sorted(self.model_versions)}, weights {sorted(self.weights)}"
            )
        if self.model_calibrations and set(self.model_calibrations) != set(self.weights):
            raise ExportInputError(
                f"model_calibrations names {sorted(self.model_calibrations)}, weights {sorted(self.weights)}"
            )
        return self

    def write(self, repository: Path) -> Path:
        path = repository / ENSEMBLE_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, repository: Path) -> EnsembleFile | None:
        """The repository's ensemble, None when it has none; a malformed file raises ValueError."""
        path = repository / ENSEMBLE_NAME
        if not path.is_file():
            return None
        return cls.model_validate_json(path.read_text())
