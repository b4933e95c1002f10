"""Malformed settings are refused when read, at start-up, naming the DFS_* variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.config import Settings, invalid_settings_message
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("value", ["dcl", "dcl=abc", "=0.5", "dcl=-1", "dcl=nan", "dcl=0.5,lib=inf"])
def test_malformed_ensemble_weights_are_refused(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(ensemble_weights=value)
    assert invalid_settings_message(caught.value).splitlines()[1].strip().startswith("DFS_ENSEMBLE_WEIGHTS:")


def test_well_formed_ensemble_weights_are_read() -> None:
    assert Settings(ensemble_weights=" dcl=0.6, ftcn = 0.4 ").ensemble_weight_map == {"dcl": 0.6, "ftcn": 0.4}


@pytest.mark.parametrize("value", ["", "has space", "-leading-dash", "a/b", "x" * 64])
def test_malformed_replica_ids_are_refused(value: str) -> None:
    """A replica id starts every job id it gives, so it must be safe in a URL and as a folder name."""
    with pytest.raises(ValidationError) as caught:
        Settings(replica_id=value)
    assert invalid_settings_message(caught.value).splitlines()[1].strip().startswith("DFS_REPLICA_ID:")


def test_the_default_replica_id_is_a_valid_host_name() -> None:
    from service.config import default_replica_id

    assert Settings().replica_id == default_replica_id() and Settings(replica_id="pod-7.zone-a").replica_id


@pytest.mark.parametrize("module", ["service", "service.cli"])
def test_entry_points_exit_with_the_variable_named(module: str) -> None:
    """Before: `python -m service` started, reported healthy and answered 500 to every /predict."""
    env = {**os.environ, "DFS_ENSEMBLE_WEIGHTS": "dcl=abc", "ORT_DISABLE_TELEMETRY": "1"}
    args = [sys.executable, "-m", module] + (["score", "missing.mp4"] if module == "service.cli" else [])
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "DFS_ENSEMBLE_WEIGHTS" in result.stderr and "'dcl=abc'" in result.stderr
    assert "Traceback" not in result.stderr
