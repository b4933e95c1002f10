"""Stage 1, fetch: bring the caller's video onto local disk, safely.

The service downloads URLs that strangers hand it, so this module is the SSRF boundary:
- only http(s) URLs, plus local paths (or ``file://``) under ``DFS_LOCAL_ROOTS``;
- every hop's host is resolved and refused when any address is loopback, private, link-local,
  multicast or reserved (unless ``DFS_ALLOW_PRIVATE_URLS``); redirects are followed by hand so each
  hop is checked, and the connected peer address is checked again (DNS rebinding);
- a byte cap (Content-Length first, then while streaming) and a wall-clock deadline.

The download lands in a temporary directory that :func:`fetched_video` always removes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from service.config import Settings
from service.errors import BadRequest, Forbidden, NotAVideo, TooLarge, UpstreamFailed, UpstreamTimeout

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchedVideo:
    path: Path
    size_bytes: int
    source: str
    content_type: str | None = None


def _address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _check_host(host: str, port: int, settings: Settings) -> None:
    """Refuse hosts that resolve to non-public addresses (all of them must be public)."""
    if settings.allow_private_urls:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UpstreamFailed(f"cannot resolve host {host!r}: {exc.strerror}", code="dns_failed") from exc
    for info in infos:
        address = str(info[4][0])
        if not _address_is_public(address):
            raise Forbidden(
                f"{host} resolves to {address}, a loopback/private/link-local address; "
                "set DFS_ALLOW_PRIVATE_URLS=true to allow it",
                code="address_not_allowed",
            )


def _check_peer(response: httpx.Response, settings: Settings) -> None:
    """Check the address actually connected to (guards against DNS rebinding)."""
    if settings.allow_private_urls:
        return
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if peer and not _address_is_public(str(peer[0])):
        raise Forbidden(f"connected to non-public address {peer[0]}", code="address_not_allowed")


def resolve_local_path(raw: str, settings: Settings) -> Path:
    """Map a local path or ``file://`` URL to a file under one of ``DFS_LOCAL_ROOTS``."""
    roots = settings.local_root_paths
    if not roots:
        raise BadRequest(
            "local paths and file:// URLs are disabled; send an http(s) URL or configure DFS_LOCAL_ROOTS",
            code="unsupported_scheme",
        )
    text = unquote(urlsplit(raw).path) if raw.startswith("file://") else raw
    path = Path(text).expanduser().resolve()
    if not any(path == root or root in path.parents for root in roots):
        raise Forbidden(f"{path} is outside the allowed local roots", code="path_not_allowed")
    if not path.is_file():
        raise BadRequest(f"no such file: {path}", code="file_not_found")
    return path


def _parse_http_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadRequest(f"unsupported URL scheme {parts.scheme!r}; use http or https", code="unsupported_scheme")
    if not parts.hostname:
        raise BadRequest(f"URL has no host: {url!r}", code="invalid_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise BadRequest(f"invalid port in URL: {url!r}", code="invalid_url") from exc
    return parts.hostname, port


async def _download(url: str, target: Path, settings: Settings) -> tuple[int, str | None]:
    timeout = httpx.Timeout(settings.fetch_timeout_s, connect=settings.fetch_connect_timeout_s)
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client:
        for _hop in range(settings.max_redirects + 1):
            host, port = _parse_http_url(url)
            await _check_host(host, port, settings)
            async with client.stream("GET", url, headers={"Accept": "video/*, */*"}) as response:
                _check_peer(response, settings)
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise UpstreamFailed(f"redirect without Location from {url}")
                    url = urljoin(url, location)
                    continue
                if response.status_code >= 400:
                    raise UpstreamFailed(
                        f"upstream answered HTTP {response.status_code} for {url}", code="upstream_status"
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > settings.max_download_bytes:
                    raise TooLarge(
                        f"video is {int(declared)} bytes; the limit is {settings.max_download_bytes}",
                        code="too_large",
                    )
                size = 0
                with target.open("wb") as sink:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > settings.max_download_bytes:
                            raise TooLarge(
                                f"video exceeds the limit of {settings.max_download_bytes} bytes", code="too_large"
                            )
                        sink.write(chunk)
                return size, response.headers.get("content-type")
    raise UpstreamFailed(f"more than {settings.max_redirects} redirects", code="too_many_redirects")


def _staging_dir(settings: Settings, prefix: str) -> Path:
    """A fresh private folder under DFS_TEMP_DIR (created if missing), or the system temp."""
    if settings.temp_dir is not None:
        settings.temp_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=settings.temp_dir))


def _check_not_empty(size: int, source: str) -> None:
    if size == 0:
        raise NotAVideo(f"{source} is empty (0 bytes)", code="empty_file")


@asynccontextmanager
async def fetched_video(file_path: str, settings: Settings) -> AsyncIterator[FetchedVideo]:
    """Yield the caller's video as a local file; downloads are deleted on exit, whatever happens."""
    file_path = file_path.strip()
    if not file_path:
        raise BadRequest("file_path is empty", code="invalid_url")
    scheme = urlsplit(file_path).scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and file_path[1:3] in (":\\", ":/")):
        path = resolve_local_path(file_path, settings)
        size = path.stat().st_size
        if size > settings.max_download_bytes:
            raise TooLarge(f"file is {size} bytes; the limit is {settings.max_download_bytes}")
        _check_not_empty(size, str(path))
        yield FetchedVideo(path=path, size_bytes=size, source=str(path))
        return

    workdir = _staging_dir(settings, "dfs-fetch-")
    try:
        target = workdir / "video"
        try:
            async with asyncio.timeout(settings.fetch_timeout_s):
                size, content_type = await _download(file_path, target, settings)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"download did not finish within {settings.fetch_timeout_s:g} s") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream timed out: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"download failed: {type(exc).__name__}: {exc}") from exc
        _check_not_empty(size, file_path)
        log.info("fetched %s (%d bytes)", file_path, size)
        yield FetchedVideo(path=target, size_bytes=size, source=file_path, content_type=content_type)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@asynccontextmanager
async def staged_upload(chunks: AsyncIterator[bytes], settings: Settings, name: str) -> AsyncIterator[FetchedVideo]:
    """Write an uploaded body to a temporary file under the same byte cap as downloads."""
    workdir = _staging_dir(settings, "dfs-upload-")
    try:
        target = workdir / "video"
        size = 0
        with target.open("wb") as sink:
            async for chunk in chunks:
                size += len(chunk)
                if size > settings.max_download_bytes:
                    raise TooLarge(f"upload exceeds the limit of {settings.max_download_bytes} bytes")
                sink.write(chunk)
        _check_not_empty(size, name)
        yield FetchedVideo(path=target, size_bytes=size, source=name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
