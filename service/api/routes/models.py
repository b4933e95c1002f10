"""``GET /models``: what is loaded, which version, on which runtime, with which spec;
``GET /ensemble``: how their scores combine and where that came from."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ServingDep
from service.api.schemas import EnsembleInfo, ModelInfo
from service.version import service_version

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelInfo])
async def list_models(serving: ServingDep) -> list[dict]:
    out = []
    for name, loaded in sorted(serving.models.items()):
        manifest = loaded.version.manifest
        out.append(
            {
                "name": name,
                "version": loaded.version.version,
                "runtime": loaded.runtime,
                "untrained": manifest.untrained,
                "spec": manifest.spec,
                "parity": manifest.parity.model_dump() if manifest.parity else None,
                "calibration": manifest.calibration.model_dump(),
                "metrics": manifest.metrics,
                "ensemble_weight": serving.ensemble.combination.weight(name),
                "file": loaded.file,
                "sha256": loaded.sha256,
                "variants": [
                    {
                        "precision": v.precision,
                        "file": v.file,
                        "runtime": v.runtime,
                        "auc_fp32": v.auc_fp32,
                        "auc": v.auc,
                        "ensemble_auc_fp32": v.ensemble_auc_fp32,
                        "ensemble_auc": v.ensemble_auc,
                        "ensemble_with": v.ensemble_with,
                        "competes_under_auto": v.quality_kept(),
                    }
                    for v in manifest.variants
                ],
                "service_version": service_version(),
            }
        )
    return out


@router.get("/ensemble", response_model=EnsembleInfo)
async def served_ensemble(serving: ServingDep) -> dict:
    """The weights and bias applied to the loaded models, their source (DFS_ENSEMBLE_WEIGHTS, the
    repository's ensemble.json, or equal) and, for a file, what it was fitted on."""
    return serving.ensemble.describe(sorted(serving.models))
