"""Every error leaves as JSON ``{"error", "detail", "request_id"}`` with the right status."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import metrics
from service.api.body_limits import CLOSE, too_large_detail
from service.errors import RequestFailure, http_headers, http_status, redact_paths

if TYPE_CHECKING:
    from service.serving import Serving

log = logging.getLogger(__name__)


def public_reason(serving: Serving, reason: str | None = None) -> str:
    """Why the models are not loaded (or ``reason``, e.g. Triton's), as a caller may read it
    (``/healthcheck``, a 503 from ``/predict``). The raw reason names the model repository, checkpoints
    or the engine cache; it stays in the service log, where loading failures are logged in full."""
    settings = serving.settings
    return redact_paths(
        serving.reason if reason is None else reason,
        {
            "DFS_MODEL_REPOSITORY": settings.model_repository,
            "DFS_ENGINE_CACHE": settings.engine_cache,
            "DFS_RETINAFACE_WEIGHTS": settings.retinaface_weights,
            "DFS_TEMP_DIR": settings.temp_dir,
        },
    )


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(
    request: Request, status: int, code: str, detail: object, headers: dict | None = None
) -> JSONResponse:
    """The one builder of error bodies, so counting here counts every error path exactly once."""
    metrics.ERRORS.labels(code).inc()
    return JSONResponse(
        status_code=status,
        content={"error": code, "detail": detail, "request_id": _request_id(request)},
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestFailure)
    async def request_failure(request: Request, exc: RequestFailure) -> JSONResponse:
        status = http_status(exc)
        log.info("request %s failed: %s %s: %s", _request_id(request), status, exc.code, exc.detail)
        return error_response(request, status, exc.code, exc.detail, http_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        code = "malformed_json" if any(e.get("type") == "json_invalid" for e in errors) else "invalid_request"
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return error_response(request, 400 if code == "malformed_json" else 422, code, detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # FastAPI's body limiter, counting a chunked body (service/api/body_limits.py)
            settings = request.app.state.serving.settings
            return error_response(request, 413, "too_large", too_large_detail(request.url.path, settings), CLOSE)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s: unexpected error", _request_id(request))
        return error_response(request, 500, "internal", f"internal error ({type(exc).__name__}); see the service log")
