"""Run ``python -m service`` as a child process on loopback and wait until it is healthy.

Benchmarks and end-to-end tests measure the real server (uvicorn, HTTP, the event loop, the
batchers) rather than calling the app in-process, so they share this launcher. Settings travel as
``DFS_*`` environment variables, exactly as in a container.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.pipeline.failures import DfsFailure

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveService:
    base_url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


LOAD_FAILED = "model loading failed"  # what service.serving logs when loading ends in an error


def start_service(
    env_overrides: dict[str, str], log_path: Path, ready_timeout: float = 180.0, source_tree: Path | None = None
) -> LiveService:
    """Start the service with ``env_overrides`` on a free loopback port; return once /healthcheck is 200.

    ``source_tree`` runs another checkout's ``service`` package (an earlier commit, for a benchmark's
    before/after in one run) with this interpreter; default this one. The process log goes to
    ``log_path``; a process that exits or stays unhealthy raises with that log.
    """
    port = free_port()
    tree = (source_tree or REPO_ROOT).resolve()
    env = {
        **os.environ,
        "DFS_HOST": "127.0.0.1",
        "DFS_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "ORT_DISABLE_TELEMETRY": "1",  # an older tree may predate setting it itself
        **env_overrides,
    }
    if source_tree is not None:  # its packages first, before this checkout's; the rest (e.g. a GPU run's site) kept
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    handle = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=tree, env=env, stdout=handle, stderr=subprocess.STDOUT
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DfsFailure(f"service exited with {process.returncode}:\n{log_path.read_text()}")
        if LOAD_FAILED in log_path.read_text(errors="replace"):  # the runtime gave up: it will not become healthy
            process.terminate()
            raise DfsFailure(f"service could not load its models:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/healthcheck", timeout=2).status_code == 200:
                return LiveService(base_url, process, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise DfsFailure(f"service not healthy after {ready_timeout} s:\n{log_path.read_text()}")


def stop_service(service: LiveService) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL after 30 s."""
    service.process.terminate()
    try:
        service.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.process.kill()
