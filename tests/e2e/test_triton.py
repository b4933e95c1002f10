"""``DFS_RUNTIME=triton`` against a real Triton Inference Server (nvidia-pytriton's ``tritonserver``, CPU).

Triton serves the committed bundle's FTCN (clip) and DCL (frame) through this project's python-backend
model.py (ONNX Runtime inside Triton; PyPI's Triton has no onnxruntime backend), generated with a small
``max_batch_size`` so the client's splitting is exercised. The service runs as a real process.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from bench.triton_server import TritonServer, missing_reason, start_triton, stop_triton
from export.triton_config import TritonOptions, write_python_backend_repository
from service.launcher import LiveService, free_port, start_service, stop_service

if TYPE_CHECKING:
    from service.pipeline.triton_engine import TritonEngine

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "model_repository"
MODELS = ["dcl", "ftcn", "pcl_i2g"]  # pcl_i2g: a second output (its heat map) that Triton is not asked for
MAX_BATCH = 4  # Triton's max_batch_size here: below the service's batches (8 clips), so they are split


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)$", line)
        if match and all(f'{k}="{v}"' in (match["labels"] or "") for k, v in labels.items()):
            total += float(match["value"])
    return total


class TritonHolder:
    """The module's Triton server; restartable on the same ports (the outage test stops and restarts it)."""

    def __init__(self, repository: Path, workdir: Path) -> None:
        self.repository, self.workdir = repository, workdir
        self.server: TritonServer = start_triton(repository, workdir, models=MODELS)

    def restart(self) -> None:
        self.server = start_triton(
            self.repository,
            self.workdir,
            models=MODELS,
            http_port=self.server.http_port,
            metrics_port=self.server.metrics_port,
        )


@pytest.fixture(scope="module")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("triton") / "repository"
    # 20 ms queue delay: concurrent requests reliably meet in one execution on a busy 2-core machine
    write_python_backend_repository(
        BUNDLE, out, TritonOptions(instance_kind="cpu", max_batch_size=MAX_BATCH, max_queue_delay_us=20000)
    )
    for name in [p.name for p in out.iterdir()]:
        if name not in MODELS:
            shutil.rmtree(out / name)
    return out


@pytest.fixture(scope="module")
def triton(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHolder]:
    holder = TritonHolder(triton_repository, tmp_path_factory.mktemp("triton-run"))
    print(f"tritonserver ready in {holder.server.started_in_s:.1f} s")
    yield holder
    stop_triton(holder.server)


def _service_env(videos: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "DFS_MODEL_REPOSITORY": str(BUNDLE),
        "DFS_MODELS": ",".join(MODELS),
        "DFS_DEVICE": "cpu",
        "DFS_LOCAL_ROOTS": str(videos["one_face"].parent),
        "DFS_MAX_CONCURRENT_REQUESTS": "4",
        "DFS_BATCH_MAX_WAIT_MS": "50",
        "DFS_TRITON_RETRIES": "1",
        "DFS_TRITON_RETRY_BACKOFF_S": "0.1",
        **extra,
    }


@pytest.fixture(scope="module")
def triton_service(
    triton: TritonHolder, videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    logs = tmp_path_factory.mktemp("triton-logs")
    service = start_service(
        _service_env(videos, DFS_RUNTIME="triton", DFS_TRITON_URL=triton.server.url), logs / "service.log"
    )
    yield service
    stop_service(service)


def predict(service: LiveService, video: Path) -> httpx.Response:
    with service.client() as client:
        return client.post("/predict", json={"file_path": str(video)})


def test_scores_through_triton_equal_in_process_onnxruntime(
    triton_service: LiveService, videos: dict[str, Path], tmp_path: Path
) -> None:
    with triton_service.client() as client:
        assert client.get("/healthcheck").json() == {"healthy": True}
        models = {m["name"]: m for m in client.get("/models").json()}
    assert sorted(models) == MODELS and all(
        m["runtime"].startswith("triton:1@http://127.0.0.1:") for m in models.values()
    )
    remote = predict(triton_service, videos["one_face"])
    assert remote.status_code == 200, remote.text
    # onnxruntime, as the Triton backend runs: DFS_RUNTIME=auto may pick OpenVINO for a model (its timing,
    # cached in DFS_DATA_DIR by earlier tests), whose numerics differ by ~1e-3
    local_env = _service_env(videos, DFS_RUNTIME="onnxruntime", DFS_DATA_DIR=str(tmp_path / "data"))
    local_service = start_service(local_env, tmp_path / "local.log")
    try:
        local = predict(local_service, videos["one_face"])
    finally:
        stop_service(local_service)
    assert local.status_code == 200, local.text
    got, want = remote.json(), local.json()
    assert got["faces"] and len(got["faces"]) == len(want["faces"])
    assert got["prediction"] == want["prediction"]
    pairs = [(got["df_probability"], want["df_probability"])]
    for name in MODELS:
        pairs.append((got["models"][name]["score"], want["models"][name]["score"]))
        assert {k: v for k, v in got["models"][name].items() if k != "score"} == {
            k: v for k, v in want["models"][name].items() if k != "score"
        }
    for mine, theirs in zip(got["faces"], want["faces"], strict=True):
        pairs.append((mine["score"], theirs["score"]))
        pairs += [(mine["models"][n]["score"], theirs["models"][n]["score"]) for n in MODELS]
    worst = max(abs(a - b) for a, b in pairs)
    print(f"max |P_triton - P_onnxruntime| over {len(pairs)} scores: {worst:.2e}")
    assert worst <= 1e-6 + 1e-12  # scores are rounded to 6 decimals in the response
    with triton_service.client() as client:
        service_metrics = client.get("/metrics").text
    for name in MODELS:
        assert metric(service_metrics, "dfs_remote_inference_seconds_count", model=name) > 0
        assert metric(service_metrics, "dfs_remote_ready", model=name) == 1


def _engine(server: TritonServer, name: str) -> tuple[TritonEngine, tuple[int, ...]]:
    from export.manifest import Manifest
    from service.pipeline.triton_engine import TritonClients, TritonEngine, TritonSettings

    manifest = Manifest.read(BUNDLE / name / "1")
    clients = TritonClients(TritonSettings(url=server.url, retries=0))
    shape = tuple(manifest.inputs[0].shape[1:])
    return TritonEngine(clients, name, 1, input_name="input", output_name="logit", item_shape=shape), shape


def test_concurrent_requests_are_batched_by_triton_and_big_batches_split(triton: TritonHolder) -> None:
    import onnxruntime as ort

    engine, shape = _engine(triton.server, "dcl")
    assert engine.served.max_batch_size == MAX_BATCH
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, *shape)).astype(np.float32) for _ in range(12)]
    before = triton.server.metrics()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:  # one tritonclient per thread
        results = list(pool.map(engine.run, inputs))
    after = triton.server.metrics()
    inferences = metric(after, "nv_inference_count", model="dcl") - metric(before, "nv_inference_count", model="dcl")
    executions = metric(after, "nv_inference_exec_count", model="dcl") - metric(
        before, "nv_inference_exec_count", model="dcl"
    )
    assert inferences == 12
    assert executions < inferences, (executions, inferences)  # Triton's dynamic batcher merged requests
    session = ort.InferenceSession(str(BUNDLE / "dcl" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["logit"], {"input": np.concatenate(inputs)})[0].reshape(-1)
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=0, atol=1e-6)
    # a batch above max_batch_size is split by the client: 10 items -> requests of 4, 4, 2
    big = np.concatenate(inputs[:10])
    requests_before = metric(triton.server.metrics(), "nv_inference_request_success", model="dcl")
    np.testing.assert_allclose(engine.run(big), expected[:10], rtol=0, atol=1e-6)
    assert metric(triton.server.metrics(), "nv_inference_request_success", model="dcl") - requests_before == 3


def test_wrong_shapes_and_oversized_batches_are_refused_clearly(triton: TritonHolder) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from service.pipeline.triton_engine import TritonRejected

    engine, shape = _engine(triton.server, "dcl")
    with pytest.raises(TritonRejected, match=r"\[400\].*unexpected shape for input 'input'.*Expected \[-1,3,224,224\]"):
        engine.run(np.zeros((2, 3, 100, 100), np.float32))
    client = httpclient.InferenceServerClient(triton.server.url.removeprefix("http://"))
    batch = np.zeros((MAX_BATCH + 1, *shape), np.float32)
    request = httpclient.InferInput("input", list(batch.shape), "FP32")
    request.set_data_from_numpy(batch)
    with pytest.raises(InferenceServerException, match=f"batch-size must be <= {MAX_BATCH}"):
        client.infer("dcl", [request])
    # the same oversized batch through the engine is split and served
    assert engine.run(batch).shape == (MAX_BATCH + 1,)


def test_model_missing_on_the_server_makes_the_service_unhealthy(
    triton: TritonHolder, triton_service: LiveService
) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.server.url.removeprefix("http://"))
    client.unload_model("dcl")
    try:
        deadline = time.monotonic() + 30
        with triton_service.client() as service:
            while time.monotonic() < deadline:
                health = service.get("/healthcheck")
                if health.status_code == 503:
                    break
                time.sleep(0.5)
        assert health.status_code == 503
        assert "model(s) not ready: dcl v1" in health.json()["reason"], health.json()
    finally:
        client.load_model("dcl")
    deadline = time.monotonic() + 60
    with triton_service.client() as service:
        while time.monotonic() < deadline and service.get("/healthcheck").status_code != 200:
            time.sleep(0.5)
        assert service.get("/healthcheck").json() == {"healthy": True}


def test_a_service_started_before_its_model_exists_waits_with_the_reason(
    triton: TritonHolder, videos: dict[str, Path], tmp_path: Path
) -> None:
    """A model the server lacks: the service stays unhealthy naming it (and comes up once it appears)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.server.url.removeprefix("http://"))
    client.unload_model("ftcn")
    port = free_port()
    env = {
        **os.environ,
        **_service_env(videos, DFS_RUNTIME="triton", DFS_TRITON_URL=triton.server.url),
        "DFS_HOST": "127.0.0.1",
        "DFS_PORT": str(port),
    }
    log = (tmp_path / "service.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        reason = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
                reason = health.json().get("reason", "")
                if "ftcn" in reason:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert health.status_code == 503 and "waiting for the inference server" in reason and "ftcn" in reason, reason
        client.load_model("ftcn")
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=5).status_code != 200
        ):
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=5).json() == {"healthy": True}
    finally:
        client.load_model("ftcn")
        process.terminate()
        process.wait(timeout=30)


def test_triton_stopped_mid_run_gives_503_with_reason_then_recovers(
    triton: TritonHolder, triton_service: LiveService, videos: dict[str, Path]
) -> None:
    """A request while Triton is down is refused before its video is decoded (no call to Triton
    counted), with the health check's reason; once Triton is back the service serves again."""
    stop_triton(triton.server)
    try:
        with triton_service.client() as client:
            health = client.get("/healthcheck")
            assert health.status_code == 503
            assert "unreachable" in health.json()["reason"] and triton.server.url in health.json()["reason"]
            calls_before = client.get("/metrics").text
        response = predict(triton_service, videos["one_face"])
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["error"] == "engine_unavailable" and "unreachable" in body["detail"], body
        assert "not decoded" in body["detail"], body
        assert response.headers["retry-after"] == "5"
        assert triton_service.process.poll() is None  # the service is alive
        with triton_service.client() as client:
            calls_after = client.get("/metrics").text
        for name in ("dfs_remote_errors_total", "dfs_remote_retries_total"):  # no engine call was tried
            assert metric(calls_after, name) == metric(calls_before, name), name
    finally:
        triton.restart()
    deadline = time.monotonic() + 30
    with triton_service.client() as client:
        while time.monotonic() < deadline and client.get("/healthcheck").status_code != 200:
            time.sleep(0.5)
        assert client.get("/healthcheck").json() == {"healthy": True}
        metrics_text = client.get("/metrics").text
    again = predict(triton_service, videos["one_face"])
    assert again.status_code == 200, again.text
    assert metric(metrics_text, "dfs_remote_ready", model="ftcn") == 1


def test_triton_makes_no_connection_beyond_loopback(triton_repository: Path, tmp_path: Path) -> None:
    """Every connect/bind/sendto of the server and its python-backend stubs, traced: loopback only."""
    from tests.test_offline import outside_contacts

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    trace = tmp_path / "trace.txt"
    server = start_triton(
        triton_repository,
        tmp_path / "run",
        models=["dcl"],
        wrapper=["strace", "-f", "-qq", "-e", "trace=connect,bind,sendto,sendmsg", "-o", str(trace)],
    )
    try:
        engine, shape = _engine(server, "dcl")
        engine.run(np.zeros((2, *shape), np.float32))
        server.metrics()
        time.sleep(2)
    finally:
        stop_triton(server)
    text = trace.read_text()
    assert "bind(" in text and "127.0.0.1" in text  # the trace saw the listeners
    assert outside_contacts(text) == []
    assert not re.search(r'bind\(.*inet_addr\("0\.0\.0\.0"\)', text)
