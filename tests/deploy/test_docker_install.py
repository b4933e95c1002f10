"""The image's pip steps resolve: a broken pin in the Dockerfile fails CI, without a container engine.

Slow (about a minute on 2 cores, network to the package index needed): it resolves, in a fresh
virtual environment with the Dockerfile's own pip version, exactly the requirement set of the
Dockerfile's install line (torch/torchvision pins, this project with its `gpu` extra, the pinned
onnxruntime-gpu) for the image's interpreter and platform (CPython 3.12, manylinux x86_64 up to
glibc 2.39 = Ubuntu 24.04) with `pip install --dry-run --only-binary=:all: --platform ...`. Nothing is
installed, so the CUDA packages resolve too (a CPU machine could not install them). Wheel
metadata is read with HTTP range requests (`fast-deps`), so torch's 900 MB wheel is not downloaded.
mediapipe is resolved alone with --no-deps as in the image. TensorRT is an sdist that downloads from
pypi.nvidia.com while it builds, which cannot run here: the test checks that its pinned version
exists on the index.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
TARGET = [
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--only-binary=:all:",
    *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
]


def arg(name: str) -> list[str]:
    match = re.search(rf'^ARG {name}="([^"]*)"$', DOCKERFILE, re.M)
    assert match, f"ARG {name} not found in the Dockerfile"
    return shlex.split(match.group(1))


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{shlex.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def venv_pip(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A fresh venv with the pip version the image upgrades to."""
    pip_pin = re.search(r"pip install --upgrade (pip==\S+)", DOCKERFILE)
    assert pip_pin, "the Dockerfile should pin pip"
    venv = tmp_path_factory.mktemp("docker-venv") / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    run([*pip, "install", "--quiet", pip_pin.group(1)])
    return pip


@pytest.mark.slow
def test_dockerfile_gpu_install_line_resolves_for_the_image(venv_pip: list[str], tmp_path: Path) -> None:
    install = re.search(r"^RUN pip install (.+?) \\$", DOCKERFILE, re.M)
    assert install and install.group(1) == '${TORCH_SPEC} ".[gpu]" ${ONNXRUNTIME_SPEC}', (
        "the install line changed: update this test to resolve the same set"
    )
    torch_spec, onnxruntime_spec = arg("TORCH_SPEC"), arg("ONNXRUNTIME_SPEC")
    # The project as a wheel (this is what `pip install ".[gpu]"` builds from the COPYed sources).
    run([*venv_pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path / "wheel"), str(REPO_ROOT)])
    wheel = next((tmp_path / "wheel").glob("deepfake_service-*.whl"))
    report = tmp_path / "report.json"
    run(
        [
            *venv_pip,
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--use-feature=fast-deps",
            *TARGET,
            "--target",
            str(tmp_path / "target"),
            "--report",
            str(report),
            *torch_spec,
            f"{wheel}[gpu]",
            *onnxruntime_spec,
        ]
    )
    resolved = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for spec in [*torch_spec, *onnxruntime_spec]:
        name, version = spec.split("==")
        assert resolved[name] == version, (name, resolved.get(name))
    # One ONNX Runtime build only: both wheels install the same `onnxruntime` module.
    assert "onnxruntime" not in resolved
    # torch's CUDA runtime must be the base image's CUDA major version.
    cuda_major = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.", DOCKERFILE, re.M).group(1)
    assert resolved["nvidia-cuda-runtime"].split(".")[0] == cuda_major, resolved["nvidia-cuda-runtime"]
    assert any(name.endswith(f"-cu{cuda_major}") for name in resolved), "no CUDA wheel for that CUDA version"


@pytest.mark.slow
def test_dockerfile_no_deps_and_nvidia_pins_exist(venv_pip: list[str], tmp_path: Path) -> None:
    assert re.search(r"pip install --no-deps \$\{MEDIAPIPE_SPEC\}", DOCKERFILE)
    mediapipe = arg("MEDIAPIPE_SPEC")
    assert mediapipe == ["mediapipe==0.10.21"]
    run(
        [
            *venv_pip,
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--no-deps",
            *TARGET,
            "--target",
            str(tmp_path / "target"),
            *mediapipe,
        ]
    )
    tensorrt = arg("TENSORRT_SPEC")
    name, version = tensorrt[0].split("==")
    versions = run([*venv_pip, "index", "versions", name]).stdout
    assert re.search(rf"\b{re.escape(version)}\b", versions), f"{name}=={version} is not on the index: {versions[:500]}"
