"""``GET /models``: what is loaded, which version, on which runtime, with which spec."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import RuntimeDep
from service.api.schemas import ModelInfo

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelInfo])
async def list_models(runtime: RuntimeDep) -> list[dict]:
    out = []
    for name, loaded in sorted(runtime.models.items()):
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
            }
        )
    return out
