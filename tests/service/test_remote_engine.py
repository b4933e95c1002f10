"""DFS_RUNTIME=triton without a server: an unreachable engine is a 503 (never split, never a crash),
retried with back-off and counted; grpc:// and a missing URL are refused with the reason at load.
(tests/e2e/test_triton.py runs the same paths against a real Triton server.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from models import get_spec
from service.config import Settings
from service.errors import Unavailable, http_headers, http_status
from service.launcher import free_port
from service.pipeline.engines import DynamicBatcher
from service.pipeline.triton_engine import (
    TritonClients,
    TritonHealth,
    TritonSettings,
    TritonUnavailable,
    call_with_retries,
)
from service.serving import Serving

SPEC = get_spec("dcl")
REPO_ROOT = Path(__file__).resolve().parents[2]


class DownEngine:
    runtime = "triton:test"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        raise TritonUnavailable("Triton at http://127.0.0.1:1 unreachable: ConnectionRefusedError")


def test_an_unavailable_engine_fails_the_batch_with_503_without_splitting_it() -> None:
    engine = DownEngine()

    async def scenario() -> list[object]:
        batcher = DynamicBatcher("dcl", engine, SPEC, max_batch=8, max_wait_s=0.05)
        batcher.start()
        try:
            images = list(np.zeros((4, SPEC.input_size, SPEC.input_size, 3), np.uint8))
            return await asyncio.gather(
                batcher.infer("a", images[:2]), batcher.infer("b", images[2:]), return_exceptions=True
            )
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert engine.calls == [4]  # one batch, not retried in halves
    for result in results:
        assert isinstance(result, Unavailable) and http_status(result) == 503 and result.code == "engine_unavailable"
        assert "unreachable" in result.detail and http_headers(result) == {"Retry-After": "5"}


def test_connection_errors_are_retried_with_backoff_then_typed_and_counted() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    clients = TritonClients(TritonSettings(url=url, retries=2, backoff_s=0.05, connect_timeout_s=1))

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    retries, errors = (
        sample("dfs_remote_retries_total", model="m"),
        sample("dfs_remote_errors_total", model="m", kind="unavailable"),
    )
    started = time.perf_counter()
    with pytest.raises(TritonUnavailable, match=f"Triton at {url} unreachable for readiness of m after 3 attempts"):
        call_with_retries(clients, "m", "readiness", lambda client: client.is_server_ready())
    assert time.perf_counter() - started >= 0.05 + 0.1  # back-off 0.05 s, then 0.1 s
    assert sample("dfs_remote_retries_total", model="m") - retries == 2
    assert sample("dfs_remote_errors_total", model="m", kind="unavailable") - errors == 1
    health = TritonHealth(clients, {"m": "1"})
    reason = health.check()
    assert reason is not None and reason.startswith(f"Triton at {url} unreachable")
    assert sample("dfs_remote_ready", model="m") == 0


def _settings(**extra: object) -> Settings:
    return Settings(
        model_repository=REPO_ROOT / "model_repository",
        models="dcl",
        device="cpu",
        face_detector="blazeface",
        runtime="triton",
        **extra,
    )


def test_grpc_and_missing_urls_are_refused_at_load_with_the_reason() -> None:
    for url, expected in (("grpc://triton:8001", "protobuf >= 6.30"), ("", "needs DFS_TRITON_URL")):
        serving = Serving(_settings(triton_url=url))
        asyncio.run(serving.load())
        assert not serving.ready and expected in serving.reason, serving.reason


def test_a_triton_that_is_down_at_start_is_waited_for_with_the_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    serving = Serving(_settings(triton_url=url, triton_retries=0, triton_connect_timeout_s=1))

    async def scenario() -> str | None:
        loading = asyncio.create_task(serving.load())
        deadline = time.monotonic() + 120
        while "waiting for the inference server" not in serving.reason and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        reason = await serving.health_reason()
        assert not loading.done()  # still trying, not failed
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        return reason

    reason = asyncio.run(scenario())
    assert reason is not None and reason.startswith("waiting for the inference server: Triton at " + url), reason
    assert not serving.ready
