"""API keys as held in memory and read from DFS_API_KEYS_FILE (in-process; the e2e tests cover the HTTP side)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.api.auth import configured_hashes, matches
from service.api_keys import ApiKeyFileError, read_key_file
from service.app import create_app
from service.config import Settings


def test_settings_hold_hashes_not_keys() -> None:
    settings = Settings(api_keys=" first-key ,second-key,")
    stored = settings.api_keys.get_secret_value()
    assert (
        "first-key" not in stored
        and "first-key" not in repr(settings)
        and "first-key" not in str(settings.model_dump())
    )
    assert settings.api_key_hashes == ["sha256:" + hashlib.sha256(k).hexdigest() for k in (b"first-key", b"second-key")]
    assert Settings(api_keys=stored).api_key_hashes == settings.api_key_hashes, "hashing twice changes nothing"
    assert matches("second-key", configured_hashes(settings)) and not matches("second-ke", configured_hashes(settings))


def test_key_file_takes_keys_and_hashes_and_skips_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# ops keys\n\n  plain-key  \nsha256:{hashlib.sha256(b'hashed').hexdigest().upper()}\n")
    hashes = read_key_file(path)
    assert hashes == [hashlib.sha256(b"plain-key").digest(), hashlib.sha256(b"hashed").digest()]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("# nothing but a comment\n\n", "holds no key"),
        ("good-key\nsha256:abc123\n", "line 2"),
        (None, "cannot be read"),
    ],
)
def test_an_unusable_key_file_stops_start_up(tmp_path: Path, content: str | None, message: str) -> None:
    """A deployment that meant to set keys must not come up open instead."""
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ApiKeyFileError, match=message) as info:
        create_app(Settings(api_keys_file=path, device="cpu"))
    assert "abc123" not in str(info.value) and "good-key" not in str(info.value), "the message quotes no line"
