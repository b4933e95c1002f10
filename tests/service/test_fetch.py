"""The fetch stage against a real loopback HTTP server (SSRF rules, limits, cleanup)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.config import Settings
from service.errors import ServiceError
from service.pipeline import fetch
from tests.conftest import FileServer


def run_fetch(url: str, settings: Settings) -> tuple[int, Path]:
    async def go() -> tuple[int, Path]:
        async with fetch.fetched_video(url, settings) as video:
            assert video.path.is_file()
            return video.size_bytes, video.path

    return asyncio.run(go())


def error_of(url: str, settings: Settings) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        run_fetch(url, settings)
    return info.value


def test_download_is_streamed_and_removed(file_server: FileServer, videos: dict[str, Path]) -> None:
    size, path = run_fetch(file_server.url("one_face.mp4"), Settings(allow_private_urls=True))
    assert size == videos["one_face"].stat().st_size
    assert not path.exists() and not path.parent.exists(), "temp download must be deleted"


def test_temp_dir_is_created_when_missing(file_server: FileServer, tmp_path: Path) -> None:
    staging = tmp_path / "not" / "yet"
    size, path = run_fetch(file_server.url("one_face.mp4"), Settings(allow_private_urls=True, temp_dir=staging))
    assert size > 0 and path.parent.parent == staging and staging.is_dir() and not any(staging.iterdir())


def test_loopback_refused_by_default(file_server: FileServer) -> None:
    error = error_of(file_server.url("one_face.mp4"), Settings())
    assert (error.status_code, error.code) == (403, "address_not_allowed")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.8", "192.168.1.1", "169.254.169.254", "::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0"])
def test_non_public_addresses(address: str) -> None:
    assert not fetch._address_is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888"])
def test_public_addresses(address: str) -> None:
    assert fetch._address_is_public(address)


def test_redirect_to_private_address_is_refused(file_server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first hop is allowed (our loopback server stands in for a public host); the redirect
    target is link-local and must be refused before any connection to it."""
    real_check = fetch._address_is_public
    monkeypatch.setattr(fetch, "_address_is_public", lambda a: a == "127.0.0.1" or real_check(a))
    ok_size, _ = run_fetch(file_server.url("one_face.mp4"), Settings())
    assert ok_size > 0
    error = error_of(file_server.url("redirect?to=http://169.254.169.254/latest/meta-data"), Settings())
    assert (error.status_code, error.code) == (403, "address_not_allowed")
    followed, _ = run_fetch(file_server.url("redirect?to=/one_face.mp4"), Settings())
    assert followed == ok_size


def test_limits(file_server: FileServer) -> None:
    settings = Settings(allow_private_urls=True, max_download_bytes=1024 * 1024, fetch_timeout_s=1.5)
    assert error_of(file_server.url("large.mp4"), settings).status_code == 413
    assert error_of(file_server.url("stall"), settings).status_code == 504
    assert error_of(file_server.url("nothing-here.mp4"), settings).status_code == 502
    assert error_of(file_server.url("empty.mp4"), settings).code == "empty_file"


def test_local_roots(videos: dict[str, Path], tmp_path: Path) -> None:
    root = videos["one_face"].parent
    settings = Settings(local_roots=str(root))
    size, path = run_fetch(str(videos["one_face"]), settings)
    assert path == videos["one_face"] and path.exists(), "local files are used in place, never deleted"
    assert run_fetch(f"file://{videos['one_face']}", settings)[0] == size
    assert error_of(str(root / ".." / "elsewhere.mp4"), settings).code == "path_not_allowed"
    assert error_of(str(videos["one_face"]), Settings()).code == "unsupported_scheme"
