"""Every benchmark script imports and explains itself (``--help``): they are not run by CI, so this
keeps them from rotting when the modules they drive change."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = sorted(p.name for p in (REPO_ROOT / "bench").glob("*.py") if not p.name.startswith("_"))


def test_bench_scripts_found() -> None:
    assert {"e2e.py", "floor.py", "sampling.py", "stages.py", "held_out.py", "train.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    result = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and len(result.stdout) > 300


@pytest.mark.parametrize("script", ["bench/gpu_check.sh", "scripts/gpu_pack.sh"])
def test_gpu_check_scripts_parse_and_refuse_bad_usage(script: str) -> None:
    assert subprocess.run(["bash", "-n", script], cwd=REPO_ROOT, timeout=30).returncode == 0
    if script == "bench/gpu_check.sh":
        result = subprocess.run(["bash", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                                env={"OUT": "/tmp/dfs-gpu-check-usage", "PATH": "/usr/bin:/bin"})
        assert result.returncode == 2 and "usage:" in result.stderr
