"""Probes: ``/healthcheck`` (ready: models loaded) and ``/livez`` (process alive, always cheap)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import ServingDep
from service.api.errors import public_reason
from service.api.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthcheck", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def healthcheck(serving: ServingDep) -> JSONResponse:
    """200 ``{"healthy": true}`` once every model is loaded (and, on DFS_RUNTIME=triton, Triton and every
    model are ready there); 503 with the reason before or on failure."""
    reason = await serving.health_reason()
    if reason is None:
        return JSONResponse({"healthy": True})
    return JSONResponse({"healthy": False, "reason": public_reason(serving, reason)}, status_code=503)


@router.get("/livez", response_model=HealthResponse)
async def livez() -> dict:
    """Liveness: the event loop answers. Never touches models, so slow loading is not a restart."""
    return {"healthy": True}
