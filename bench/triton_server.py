"""Start a real Triton Inference Server (nvidia-pytriton's ``tritonserver``) on loopback, on the CPU.

nvidia-pytriton pins numpy<2, so it lives in a venv of its own (``.venv-triton``, made by
scripts/setup.sh, with onnxruntime at the project's version). The models are this project's
python-backend variant of a repository (``export.triton_config --python-backend``). Who runs model.py:
the backend's stub embeds the libpython of the interpreter both venvs were made from (found through
``LD_LIBRARY_PATH``; otherwise it loads the system's libpython), and model.py puts the Triton venv's
site-packages (numpy 1.26, onnxruntime) first on ``sys.path`` via ``PYTHON_BACKEND_SITE_PACKAGES``:
the stub reads arrays with numpy 1's memory layout, and under numpy 2 every output came back empty.

Everything binds to 127.0.0.1 (HTTP, metrics) and gRPC is off, on free ports.

As a script it serves a repository until interrupted, for trying ``DFS_RUNTIME=triton`` by hand::

    python bench/triton_server.py --repository model_repository
    DFS_RUNTIME=triton DFS_TRITON_URL=http://127.0.0.1:PORT python -m service   # in another shell
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project's packages

from service.launcher import free_port  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TRITON_VENV = Path(os.environ.get("DFS_TEST_TRITON_VENV", REPO_ROOT / ".venv-triton"))
PYTRITON_VERSION = "0.7.0"  # pinned in scripts/setup.sh


def pytriton_site() -> Path | None:
    """The site-packages of the Triton venv holding pytriton's server, if installed."""
    for site in sorted(TRITON_VENV.glob("lib/python3*/site-packages")):
        if (site / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
            return site
    return None


def missing_reason() -> str | None:
    """Why the server cannot start here, or None."""
    site = pytriton_site()
    if site is None:
        return (
            f"nvidia-pytriton=={PYTRITON_VERSION} is not installed in {TRITON_VENV} "
            "(scripts/setup.sh installs it; it could not be installed here)"
        )
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not (site / "pytriton" / "tritonserver" / "python_backend_stubs" / version).is_dir():
        return f"nvidia-pytriton has no python backend stub for Python {version}"
    if not (site / "onnxruntime").is_dir():
        return f"onnxruntime is not installed in {TRITON_VENV} (scripts/setup.sh installs it for model.py)"
    return None


@dataclass
class TritonServer:
    process: subprocess.Popen
    http_port: int
    metrics_port: int
    log_path: Path
    started_in_s: float
    command: list[str]
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _backends(workdir: Path, site: Path) -> Path:
    """A backend folder with the python backend and the stub built for this interpreter's version."""
    dist = site / "pytriton" / "tritonserver"
    target = workdir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(dist / "backends" / "python" / name, target / name)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy2(dist / "python_backend_stubs" / version / "triton_python_backend_stub", target)
    return target.parent


def triton_env(site: Path) -> dict[str, str]:
    """The server's environment: its bundled libraries, this interpreter's libpython, no telemetry."""
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_LIBRARY_PATH"))}
    env.update(
        {
            "LD_LIBRARY_PATH": os.pathsep.join([str(site / "nvidia_pytriton.libs"), libdir]),
            # the stub reads numpy arrays with numpy 1's layout (pybind11 < 2.12): under numpy 2 every output
            # tensor came back empty ("output tensor shape does not match size of output"), so model.py runs
            # on the Triton venv's packages (numpy<2, onnxruntime pinned as the project's), not the project's
            "PYTHON_BACKEND_SITE_PACKAGES": str(site),
            "ORT_DISABLE_TELEMETRY": "1",
            "CUDA_VISIBLE_DEVICES": "",  # CPU only: never probe for GPUs
        }
    )
    return env


def start_triton(
    repository: Path,
    workdir: Path,
    *,
    http_port: int | None = None,
    metrics_port: int | None = None,
    models: list[str] | None = None,
    ready_timeout: float = 120.0,
    wrapper: list[str] | None = None,
) -> TritonServer:
    """Start ``tritonserver`` on ``repository`` and wait until it and its models are ready.

    Explicit model control (``models`` loaded at start, all by default), so tests can unload one.
    ``wrapper`` prefixes the command (e.g. ``strace -f -o FILE``).
    """
    site = pytriton_site()
    if site is None:
        raise RuntimeError(missing_reason())
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    metrics_port = metrics_port or free_port()
    names = (
        models if models is not None else sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
    )
    command = [
        str(site / "pytriton" / "tritonserver" / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={_backends(workdir, site)}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--allow-grpc=false",
        "--allow-metrics=true",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false",
        "--model-control-mode=explicit",
        *[f"--load-model={name}" for name in names],
        "--exit-on-error=false",
        "--strict-readiness=true",
        "--log-verbose=0",
        "--exit-timeout-secs=5",
    ]
    env = triton_env(site)
    log_path = workdir / f"tritonserver-{http_port}.log"
    started = time.perf_counter()
    # a session of its own: stop_triton signals the whole group (a wrapper such as strace, the server
    # and its python-backend stubs), so no server outlives its test
    process = subprocess.Popen(
        [*(wrapper or []), *command],
        cwd=workdir,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = TritonServer(process, http_port, metrics_port, log_path, 0.0, command, env)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{server.log_text()[-4000:]}")
        try:
            ready = httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200
            if ready and all(
                httpx.get(f"{server.url}/v2/models/{name}/ready", timeout=2).status_code == 200 for name in names
            ):
                server.started_in_s = time.perf_counter() - started
                return server
            failed = [
                m
                for m in httpx.post(f"{server.url}/v2/repository/index", timeout=2).json()
                if m.get("name") in names and m.get("state") == "UNAVAILABLE"
            ]
            if failed:
                stop_triton(server)
                raise RuntimeError(f"Triton could not load {failed}:\n{server.log_text()[-4000:]}")
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_triton(server)
    raise RuntimeError(f"tritonserver not ready after {ready_timeout} s:\n{server.log_text()[-4000:]}")


def stop_triton(server: TritonServer, timeout: float = 30.0) -> None:
    """SIGTERM to the server's process group (Triton unloads its models and exits), SIGKILL after ``timeout``."""
    group = server.process.pid  # the group leader: started with start_new_session
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the wrapper may exit before the server it traced
            os.killpg(group, 0)
            time.sleep(0.2)
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        server.process.wait(timeout=10)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    from export.triton_config import TritonOptions, write_python_backend_repository

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repository",
        type=Path,
        default=REPO_ROOT / "model_repository",
        help="the service's model repository; its python-backend variant is written to a temp folder",
    )
    parser.add_argument("--http-port", type=int, help="Triton's HTTP port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(f"cannot start Triton here: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dfs-triton-") as work:
        served = Path(work) / "repository"
        write_python_backend_repository(args.repository, served, TritonOptions(instance_kind="cpu"))
        server = start_triton(served, Path(work), http_port=args.http_port)
        print(f"Triton ready in {server.started_in_s:.1f} s: DFS_TRITON_URL={server.url} (Ctrl-C stops it)", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_triton(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
