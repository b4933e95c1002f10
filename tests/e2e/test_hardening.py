"""Hardening, over the real server: API keys, metrics on their own port, /metrics counters, a capped
unknown-model error, /docs that works offline, and what /models says about the bytes it serves."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx
import pytest

from tests.conftest import FileServer, LiveService, free_port, start_service, stop_service

pytestmark = pytest.mark.slow

NO_FETCH = "http://127.0.0.1:9/x.mp4"  # a closed loopback port: a request that got this far fails with a 502


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of the exposition text, 0 when the series is absent."""
    match = re.search(rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# ---- /docs without a CDN ---------------------------------------------------------------------


def test_docs_load_only_from_the_service(live_service: LiveService) -> None:
    """FastAPI's page pulled Swagger UI from cdn.jsdelivr.net: blank on a machine without internet."""
    with live_service.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200
        html = page.text
        foreign = [
            url
            for url in re.findall(r"https?://[^\s\"'<>]+", html)
            if urlparse(url).hostname not in ("127.0.0.1", "localhost")
        ]
        assert not foreign, foreign
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        scripts = [a for a in assets if a.endswith(".js")]
        styles = [a for a in assets if a.endswith(".css")]
        assert scripts and styles, assets
        for asset in scripts + styles:
            response = client.get(urljoin(live_service.base_url + "/docs", asset))
            assert response.status_code == 200, asset
            assert len(response.content) > 50_000, (asset, len(response.content))  # Swagger UI, not a stub
        assert "SwaggerUIBundle" in client.get(urljoin(live_service.base_url, scripts[0])).text
        assert client.get("/openapi.json").json()["info"]["version"] == importlib.metadata.version("deepfake-service")


# ---- unknown models ----------------------------------------------------------------------------


def test_unknown_model_error_names_the_loaded_models_not_every_name_sent(live_service: LiveService) -> None:
    """The error used to echo every name a client sent (2,000 names made a 46 KB error)."""
    names = ["m" * 300] + [f"no-such-model-{i:04d}" for i in range(1999)]
    with live_service.client() as client:
        response = client.post("/predict", json={"file_path": NO_FETCH, "models": names})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "unknown_model"
    detail = body["detail"]
    assert len(detail) < 300, len(detail)
    assert detail.endswith("loaded: ftcn"), detail
    assert "m" * 40 in detail and "m" * 41 not in detail, "a long name is cut short"
    assert "no-such-model-0001" in detail and "no-such-model-0002" not in detail, "at most 3 names, in the order sent"
    assert "1997 more" in detail, detail


# ---- /metrics: errors by code, verdicts, scores ------------------------------------------------


def test_metrics_count_errors_verdicts_and_scores(live_service: LiveService, file_server: FileServer) -> None:
    with live_service.client() as client:
        before = client.get("/metrics").text
        assert client.post("/predict", json={"file_path": NO_FETCH, "models": ["nope"]}).status_code == 400
        assert client.get("/no/such/route").status_code == 404
        assert client.post("/predict", json={"file_path": file_server.url("image.mp4")}).status_code == 415
        no_face = client.post("/predict", json={"file_path": file_server.url("no_face.mp4")})
        one_face = client.post("/predict", json={"file_path": file_server.url("one_face.mp4")})
        after = client.get("/metrics").text
    assert no_face.status_code == 200 and one_face.status_code == 200, (no_face.text, one_face.text)
    verdict = one_face.json()["prediction"]
    assert verdict in ("REAL", "FAKE")

    def delta(name: str, labels: str = "") -> float:
        return metric(after, name, labels) - metric(before, name, labels)

    # every error path counted once, under the code its body carries
    assert delta("dfs_errors_total", 'code="unknown_model"') == 1
    assert delta("dfs_errors_total", 'code="not_found"') == 1
    assert delta("dfs_errors_total", 'code="not_a_video"') == 1
    assert delta("dfs_predictions_total", 'prediction="NO_FACE"') == 1
    assert delta("dfs_predictions_total", f'prediction="{verdict}"') == 1
    assert delta("dfs_predictions_total", f'prediction="{"FAKE" if verdict == "REAL" else "REAL"}"') == 0
    assert delta("dfs_video_score_count") == 1, "only a video with a face has a score"
    assert delta("dfs_video_score_sum") == pytest.approx(one_face.json()["df_probability"], abs=1e-6)


# ---- /models: which bytes are served, by which version ------------------------------------------


def test_models_report_the_file_checksum_and_the_service_version(
    live_service: LiveService, ftcn_repository: Path
) -> None:
    version = importlib.metadata.version("deepfake-service")
    with live_service.client() as client:
        health = client.get("/healthcheck")
        models = client.get("/models").json()
    assert health.json() == {"healthy": True}
    assert health.headers["X-Service-Version"] == version
    (ftcn,) = models
    engine = ftcn_repository / "ftcn" / str(ftcn["version"]) / "model.onnx"
    assert ftcn["file"] == "model.onnx"
    assert ftcn["sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert ftcn["service_version"] == version


def test_an_open_api_says_so_at_start_up(live_service: LiveService) -> None:
    assert "the API is open" in live_service.log_text()


# ---- API keys and a separate metrics port --------------------------------------------------------

ENV_KEYS = ("env-key-one", "env-key-two")
FILE_KEY = "file-key"
HASHED_KEY = "key-given-only-as-its-hash"


@pytest.fixture(scope="module")
def guarded_service(
    ftcn_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveService, int]]:
    """Keys from the environment and from a file (a key and a sha256: hash), metrics on their own port."""
    folder = tmp_path_factory.mktemp("guarded")
    keys = folder / "keys"
    keys.write_text(f"# accepted keys\n\n{FILE_KEY}\nsha256:{hashlib.sha256(HASHED_KEY.encode()).hexdigest()}\n")
    metrics_port = free_port()
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(ftcn_repository),
            "DFS_API_KEYS": ",".join(ENV_KEYS),
            "DFS_API_KEYS_FILE": str(keys),
            "DFS_METRICS_PORT": str(metrics_port),
        },
        folder / "service.log",
    )
    yield service, metrics_port
    stop_service(service)


def _unauthorized(response: httpx.Response) -> bool:
    body = response.json()
    return (
        response.status_code == 401
        and response.headers.get("www-authenticate") == "Bearer"
        and set(body) == {"error", "detail", "request_id"}
        and body["error"] == "unauthorized"
        and body["request_id"] == response.headers["x-request-id"]
    )


def test_api_keys_guard_every_route_but_the_open_ones(guarded_service: tuple[LiveService, int]) -> None:
    service, _ = guarded_service
    with service.client() as client:
        for method, path, extra in (
            ("POST", "/predict", {"json": {"file_path": NO_FETCH}}),
            ("POST", "/predict/upload", {"files": {"file": ("x.mp4", b"\x00" * 100, "video/mp4")}}),
            ("GET", "/models", {}),
            ("GET", "/ensemble", {}),
            ("GET", "/jobs", {}),  # routes that do not exist yet are guarded too: the check is on the prefix
            ("POST", "/jobs/123", {}),
        ):
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"X-API-Key": "wrong"},
                {"Authorization": f"Basic {ENV_KEYS[0]}"},
            ):
                response = client.request(method, path, headers=headers, **extra)
                assert _unauthorized(response), (method, path, headers, response.status_code, response.text)
        for path in (
            "/healthcheck",
            "/livez",
            "/docs",
            "/openapi.json",
            "/docs/static/swagger-ui.css",
            "/",
            "/web/app.js",
        ):  # the web page must open without a key: it is where one is typed
            assert client.get(path).status_code == 200, path
        for headers in (
            {"Authorization": f"Bearer {ENV_KEYS[0]}"},
            {"Authorization": f"bearer {ENV_KEYS[1]}"},
            {"X-API-Key": FILE_KEY},
            {"X-API-Key": HASHED_KEY},
        ):
            assert client.get("/models", headers=headers).status_code == 200, headers
        past_the_check = client.post(
            "/predict", headers={"X-API-Key": FILE_KEY}, json={"file_path": NO_FETCH, "models": ["nope"]}
        )
        assert past_the_check.status_code == 400 and past_the_check.json()["error"] == "unknown_model"
        schema = client.get("/openapi.json").json()
    assert schema["paths"]["/predict"]["post"]["security"], "/docs offers Authorize for the guarded routes"
    log = service.log_text()
    assert "API keys: 4 accepted" in log
    assert not any(key in log for key in (*ENV_KEYS, FILE_KEY, HASHED_KEY)), "a key reached the log"


def test_metrics_on_their_own_port_and_not_on_the_api_port(guarded_service: tuple[LiveService, int]) -> None:
    service, metrics_port = guarded_service
    with service.client() as client:
        assert _unauthorized(client.get("/models"))
        api_port = client.get("/metrics", headers={"X-API-Key": FILE_KEY})
    assert api_port.status_code == 404, api_port.text
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert metric(scraped.text, "dfs_errors_total", 'code="unauthorized"') >= 1
    assert metric(scraped.text, "dfs_models_loaded") == 1
