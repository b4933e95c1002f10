"""deploy/fetch_weights.sh, the image's weight download step, run on local file:// URLs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "fetch_weights.sh"


@pytest.fixture
def weights(tmp_path: Path) -> tuple[str, str]:
    for name in ("curl", "sha256sum", "sh"):
        if shutil.which(name) is None:
            pytest.skip(f"{name} is not installed")
    source = tmp_path / "weights.pth"
    source.write_bytes(b"not really a checkpoint, but bytes with a digest" * 100)
    return source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest()


def fetch(url: str, sha256: str, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT), url, sha256, str(dest)], capture_output=True, text=True)


def test_matching_checksum_is_accepted(weights: tuple[str, str], tmp_path: Path) -> None:
    url, digest = weights
    dest = tmp_path / "out" / "model.pth"
    dest.parent.mkdir()
    result = fetch(url, digest, dest)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert "WARNING" not in result.stderr
    assert list(dest.parent.iterdir()) == [dest]


def test_wrong_checksum_fails_and_leaves_nothing(weights: tuple[str, str], tmp_path: Path) -> None:
    url, digest = weights
    dest = tmp_path / "model.pth"
    result = fetch(url, "0" * 64, dest)
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and digest in result.stderr
    assert not dest.exists() and not Path(f"{dest}.part").exists()


def test_no_checksum_downloads_but_warns_with_the_digest(weights: tuple[str, str], tmp_path: Path) -> None:
    url, digest = weights
    dest = tmp_path / "model.pth"
    result = fetch(url, "", dest)
    assert result.returncode == 0 and dest.exists()
    assert "not verified" in result.stderr and digest in result.stderr


def test_missing_file_fails(weights: tuple[str, str], tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    result = fetch((tmp_path / "absent.pth").as_uri(), "", dest)
    assert result.returncode != 0 and not dest.exists()


def test_script_is_executable_for_the_image() -> None:
    assert SCRIPT.stat().st_mode & 0o111, "COPY keeps the mode: the image runs fetch_weights.sh directly"
