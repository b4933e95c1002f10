"""The FastAPI application: ``create_app()`` builds it; ``python -m service`` serves it.

Routers live in ``service/api/routes``; the pipeline stages in ``service/pipeline``. Creating the
app loads nothing: engines load in the background once the server starts (see ``Serving``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.admission import Admission
from service.api.auth import install_api_keys
from service.api.body_limits import CLOSE, declares_too_much, too_large_detail
from service.api.docs import install_docs
from service.api.errors import error_response, install_error_handlers
from service.api.routes import health, jobs, models, predict
from service.config import Settings, get_settings
from service.jobs.runner import JobRunner
from service.malloc import limit_malloc_arenas
from service.metrics_server import start_metrics_server
from service.serving import Serving
from service.version import service_version
from service.web.page import install_web_page

log = logging.getLogger(__name__)

# Paths used as the metrics label; anything else is "other" so scanners cannot explode label sets.
_KNOWN_PATHS = frozenset(
    {
        "/predict",
        "/predict/upload",
        "/healthcheck",
        "/livez",
        "/models",
        "/ensemble",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/jobs",
        "/jobs/upload",
    }
)


def _route_label(path: str) -> str:
    """The metrics label of a path: known paths as they are, a job's paths as "/jobs/{id}" (ids would
    explode the label set), anything else "other"."""
    if path in _KNOWN_PATHS:
        return path
    return "/jobs/{id}" if path.startswith("/jobs/") else "other"


def _sample_gpu_memory() -> None:
    """Device memory in use (all allocators: ONNX Runtime, TensorRT, torch), when CUDA is in use."""
    import sys

    torch = sys.modules.get("torch")  # never import torch (or initialise CUDA) just for a metric
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        metrics.GPU_MEMORY_BYTES.labels(str(index)).set(total - free)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    limit_malloc_arenas(settings.malloc_arena_max)  # before the app's threads: see service/malloc.py

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        serving: Serving = app.state.serving
        metrics_server = start_metrics_server(settings, _sample_gpu_memory)  # DFS_METRICS_PORT, else None
        loading = asyncio.create_task(serving.load(), name="load-models")
        await app.state.jobs.start()  # its workers wait for the models; a store that cannot open disables jobs only
        try:
            yield
        finally:
            await app.state.jobs.stop()  # running jobs are re-queued for the next start
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await serving.close()
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.stop)

    app = FastAPI(
        title="Deepfake detection service",
        version=service_version(),
        description="POST a video URL, get P(fake) per face track, per model and for the video.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI from a CDN: install_docs serves it from here
        redoc_url=None,
    )
    version = service_version()
    app.state.serving = Serving(settings)
    app.state.admission = Admission(settings.max_concurrent_requests, settings.max_queued_requests)
    app.state.jobs = JobRunner(settings, app.state.serving, app.state.admission)  # opens its database at start-up
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    # body caps (service/api/body_limits.py): JSON counted by FastAPI as it is read; uploads stream their own
    app.include_router(predict.router, max_body_size=settings.max_json_bytes)
    app.include_router(predict.upload_router)
    app.include_router(jobs.router, max_body_size=settings.max_json_bytes)
    app.include_router(jobs.upload_router)
    install_docs(app)
    install_web_page(app)  # "/": the analyst's page (service/web/static/)

    if not settings.metrics_port:  # else prometheus_client's own server has it (service/metrics_server.py)

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics() -> Response:
            _sample_gpu_memory()
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    install_api_keys(app, settings)  # added before request_context, so it runs inside it (request id, metrics)

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = predict.new_request_id(request.headers.get("x-request-id"))
        route = _route_label(request.url.path)
        started = time.perf_counter()
        if declares_too_much(request.url.path, request.headers.get("content-length"), settings):
            # refused before the route reads a byte of it
            response: Response = error_response(
                request, 413, "too_large", too_large_detail(request.url.path, settings), CLOSE
            )
        else:
            response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        response.headers["X-Service-Version"] = version
        if route != "/metrics":
            metrics.REQUESTS.labels(route, str(response.status_code)).inc()
            metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
        return response

    return app
