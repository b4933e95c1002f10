"""Deployment files: lint, render, validate, and agree with the app (names, paths, ports)."""

from __future__ import annotations

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


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return path


def render(overlay: str) -> list[dict]:
    result = subprocess.run([tool("kubectl"), "kustomize", str(REPO_ROOT / "k8s" / "overlays" / overlay)],
                            capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_hadolint_has_no_unexplained_warnings() -> None:
    result = subprocess.run([tool("hadolint"), "--config", str(REPO_ROOT / ".hadolint.yaml"), str(REPO_ROOT / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint() -> None:
    targets = ["docker-compose.yml", "deploy", "k8s", ".yamllint", ".hadolint.yaml"]
    result = subprocess.run([tool("yamllint"), "-s", *targets], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render_and_validate(overlay: str) -> None:
    import kubernetes_validate

    docs = render(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
                     "PodDisruptionBudget", "Service", "ServiceMonitor"]
    for doc in docs:
        assert doc["metadata"].get("namespace") == "deepfake"
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a CRD (prometheus-operator): no schema in kubernetes-validate
        kubernetes_validate.validate(doc, "1.34.0", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_security_and_settings(overlay: str) -> None:
    docs = {d["kind"]: d for d in render(overlay)}
    settings = docs["ConfigMap"]["data"]
    unknown = sorted(set(settings) - SETTING_NAMES)
    assert not unknown, f"ConfigMap names settings the service does not have: {unknown}"
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert container["ports"][0]["containerPort"] == int(settings["DFS_PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 600
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", settings["DFS_ENGINE_CACHE"], settings["DFS_MODEL_REPOSITORY"]} <= mounts
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    hpa_metrics = {m["type"] for m in docs["HorizontalPodAutoscaler"]["spec"]["metrics"]}
    assert hpa_metrics == {"Pods", "Resource"}


def test_probe_paths_exist_in_the_app() -> None:
    from service.app import create_app

    paths = set(create_app(Settings()).openapi()["paths"])
    for path in ("/healthcheck", "/livez", "/models", "/predict", "/predict/upload"):
        assert path in paths
    assert re.search(r"HEALTHCHECK .*http://127\.0\.0\.1:8000/healthcheck", DOCKERFILE, re.S)
    assert "EXPOSE 8000" in DOCKERFILE


def test_compose_and_dockerfile_name_only_real_settings() -> None:
    compose_env = COMPOSE["services"]["dfs"]["environment"]
    dockerfile_env = set(re.findall(r"\b(DFS_[A-Z_]+)=", DOCKERFILE))
    unknown = sorted((set(compose_env) | dockerfile_env) - SETTING_NAMES)
    assert not unknown, f"unknown settings: {unknown}"
    assert "8000:8000" in COMPOSE["services"]["dfs"]["ports"]
    gpu = COMPOSE["services"]["dfs"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    scrape = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["dfs:8000"]


def test_dashboard_queries_only_exported_metrics() -> None:
    import json

    from service import metrics

    exported = {m._name for m in vars(metrics).values() if hasattr(m, "_name")}
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "dashboards" / "dfs.json").read_text())
    used = {re.sub(r"_(bucket|sum|count|total)$", "", name)
            for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bdfs_[a-z_]+", target["expr"])}
    assert used and used <= exported | {m.removesuffix("_total") for m in exported}, used - exported


@pytest.mark.slow
def test_dockerfile_python_install_resolves_in_a_fresh_venv(tmp_path: Path) -> None:
    """The image's pip steps on the CPU variant (.[cpu] instead of .[gpu]), resolved without installing."""
    torch_spec = re.search(r'ARG TORCH_SPEC="([^"]+)"', DOCKERFILE).group(1).split()
    mediapipe = re.search(r"pip install --no-deps (mediapipe==\S+)", DOCKERFILE).group(1)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    for args in ([*torch_spec, f"{REPO_ROOT}[cpu]"], ["--no-deps", mediapipe]):
        result = subprocess.run([*pip, "install", "--dry-run", "--quiet", *args], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
