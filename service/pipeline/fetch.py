"""Stage 1, fetch: bring the caller's video onto local disk, safely.

The service downloads URLs that strangers hand it, so this module is the SSRF boundary:
- only http(s) URLs, plus local paths (or ``file://``) under ``DFS_LOCAL_ROOTS``;
- malformed input (a NUL byte, a host DNS cannot carry, a broken IPv6 literal) is a 400 before
  anything is resolved or opened;
- every hop's host is resolved **once**; every address it resolves to must be public (not loopback,
  private, link-local, multicast, reserved, unspecified or documentation, nor an IPv6 form that
  embeds such an IPv4 address) unless ``DFS_ALLOW_PRIVATE_URLS``; and the connection goes to an
  address so checked (pinned), never to a second answer of the resolver (DNS rebinding). Redirects
  are followed by hand so each hop is resolved, checked and pinned;
- a byte cap (Content-Length first, then while streaming) and a wall-clock deadline.

The download lands in a temporary directory that :func:`fetched_video` always removes. Error details
echo what the caller sent, never a server-side path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import shutil
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import httpx

from service.pipeline.failures import BadInput, NotAllowed, NotAVideo, TooLarge, UpstreamFailed, UpstreamTimeout

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class FetchSettings(Protocol):
    """The limits fetching reads (``service.config.Settings`` has them all): the media layer names the
    settings it needs rather than import the app's configuration."""

    @property
    def allow_private_urls(self) -> bool: ...
    @property
    def max_download_bytes(self) -> int: ...
    @property
    def fetch_timeout_s(self) -> float: ...
    @property
    def fetch_connect_timeout_s(self) -> float: ...
    @property
    def max_redirects(self) -> int: ...
    @property
    def local_root_paths(self) -> list[Path]: ...
    @property
    def temp_dir(self) -> Path | None: ...


#: ``async (host, port) -> addresses``: how a host name becomes the addresses to check and connect to.
Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True)
class FetchedVideo:
    path: Path
    size_bytes: int
    source: str
    content_type: str | None = None


# ---- address policy ---------------------------------------------------------------------------

_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the low 32 bits
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d (also holds :: and ::1)
# Ranges that are not public but that the ``ipaddress`` of some Python versions still calls global.
_NOT_PUBLIC = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # RFC 8215 local-use NAT64: the IPv4 bits' place varies
    ipaddress.IPv6Network("3fff::/20"),  # RFC 9637 documentation
    ipaddress.IPv6Network("fec0::/10"),  # deprecated site-local
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _plainly_public(ip: IPAddress) -> bool:
    """The ``ipaddress`` verdict, spelled out: ``is_global`` alone lets multicast (and, depending on
    the Python version, other special ranges) through."""
    special = (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_private
    )
    return ip.is_global and not special and not any(ip in net for net in _NOT_PUBLIC if ip.version == net.version)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: a translator or tunnel on the way may deliver
    the connection to them, so they must pass the policy as well."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)  # (server, client)
    return []


def _address_is_public(address: str) -> bool:
    """Whether a fetch may connect to ``address`` (an IP literal, possibly with an IPv6 zone)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv4Address):
        return _plainly_public(ip)
    embedded = _embedded_ipv4(ip)
    if not all(_plainly_public(v4) for v4 in embedded):
        return False
    if ip.ipv4_mapped is not None or ip in _NAT64_WELL_KNOWN or ip.sixtofour is not None:
        # A translator's or tunnel's spelling of that (public) IPv4 host, e.g. DNS64 answers in an
        # IPv6-only cluster; judged by the IPv4 address alone, as Python versions disagree on the prefixes.
        return True
    return _plainly_public(ip)  # the rest, Teredo included (2001::/32 is not global), as plain IPv6


# ---- URLs and host names ----------------------------------------------------------------------

_LABEL_CHARS = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class _Hop:
    """One URL to GET: ``host`` is the ASCII (IDNA) name without brackets, which is resolved, sent
    in the Host header, sent as TLS SNI and verified against the certificate."""

    url: httpx.URL
    host: str
    port: int

    @property
    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")  # host[:port] as httpx would send it, brackets included


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _check_hostname(host: str) -> None:
    """Refuse names DNS cannot carry before anything resolves them. They used to reach
    ``getaddrinfo``, whose idna codec raised ``UnicodeError`` (a 500)."""
    if _ip_literal(host) is not None:
        return
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253:
        raise BadInput(f"host name is {len(name)} characters long; DNS allows 253", code="invalid_url")
    for label in name.split("."):
        if not label:
            raise BadInput(f"host name {host!r} has an empty label", code="invalid_url")
        if len(label) > 63:
            raise BadInput(
                f"host name label {label[:20]!r}... is {len(label)} characters long; DNS allows 63", code="invalid_url"
            )
        if not _LABEL_CHARS.fullmatch(label):
            raise BadInput(f"host name {host!r} holds a character a host name cannot", code="invalid_url")


def _parse_http_url(url: str) -> _Hop:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:  # IDNA errors are UnicodeError, a ValueError
        raise BadInput(f"invalid URL {url!r}: {exc}", code="invalid_url") from exc
    if parsed.scheme not in ("http", "https"):
        raise BadInput(f"unsupported URL scheme {parsed.scheme!r}; use http or https", code="unsupported_scheme")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise BadInput(f"URL has no host: {url!r}", code="invalid_url")
    _check_hostname(host)
    return _Hop(parsed, host, parsed.port or (443 if parsed.scheme == "https" else 80))


# ---- resolve once, check every address, connect to a checked one ------------------------------


async def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver (``getaddrinfo``): every address of ``host``, in the order to try them."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _addresses(hop: _Hop, resolver: Resolver) -> list[str]:
    if _ip_literal(hop.host) is not None:
        return [hop.host]
    try:
        found = await resolver(hop.host, hop.port)
    except OSError as exc:  # socket.gaierror
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UpstreamFailed(f"cannot resolve host {hop.host!r}: {reason}", code="dns_failed") from exc
    if not found:
        raise UpstreamFailed(f"host {hop.host!r} resolves to no address", code="dns_failed")
    return found


async def _checked_addresses(hop: _Hop, settings: FetchSettings, resolver: Resolver) -> list[str]:
    """Resolve the hop's host once; every answer must pass the policy, since these answers are the
    only addresses the hop will connect to."""
    addresses = await _addresses(hop, resolver)
    if not settings.allow_private_urls:
        for address in addresses:
            _refuse_if_private(hop.host, address)
    return addresses


def _refuse_if_private(host: str, address: str) -> None:
    if not _address_is_public(address):
        raise NotAllowed(
            f"{host} resolves to {address}, which is not a public address (loopback, private, "
            "link-local, multicast, reserved or documentation); set DFS_ALLOW_PRIVATE_URLS=true to allow it",
            code="address_not_allowed",
        )


def refuse_early(file_path: str, settings: FetchSettings) -> None:
    """The source checks that need neither the network nor a processing slot, run before a request
    waits for one: an empty path, a local path outside DFS_LOCAL_ROOTS or missing, a URL that does
    not parse or has another scheme, an IP-literal host that is not public. Without this, a request
    for a private address waited in the admission line and, with the line full, got 503 "retry
    later" instead of 403. Host names are still resolved and checked when fetched (once, pinned)."""
    file_path = file_path.strip()
    if not file_path:
        raise BadInput("file_path is empty", code="invalid_url")
    if _is_local(file_path):
        resolve_local_path(file_path, settings)
        return
    hop = _parse_http_url(file_path)
    if _ip_literal(hop.host) is not None and not settings.allow_private_urls:
        _refuse_if_private(hop.host, hop.host)


def _pinned_request(client: httpx.AsyncClient, hop: _Hop, address: str) -> httpx.Request:
    """A GET of ``hop`` that connects to ``address`` while speaking to ``hop.host``.

    Why this way: httpx resolves a URL's host when it connects, so a check made beforehand could
    see another answer than the connection (DNS rebinding). httpx 0.28 / httpcore 1.0 have no
    resolver hook: ``httpx.AsyncHTTPTransport`` takes no ``httpcore`` network backend (only its
    private ``_pool`` could be swapped), and a transport of our own around
    ``httpcore.AsyncConnectionPool(network_backend=...)`` would re-implement httpx's request,
    response and exception mapping. httpx's documented ``sni_hostname`` request extension gives
    pinning with public API only: the URL names the checked IP, so the connection goes there and
    nowhere else; the Host header names the host; and httpcore passes ``sni_hostname`` to
    ``start_tls`` as ``server_hostname``, so TLS sends the host as SNI and the default SSL context
    verifies the certificate against the host, not the IP.
    """
    ip = address.split("%", 1)[0]  # a zone cannot travel in a URL; only link-local (private) addresses have one
    return client.build_request(
        "GET",
        hop.url.copy_with(host=ip),
        headers={"Host": hop.host_header, "Accept": "video/*, */*"},
        extensions={"sni_hostname": hop.host},
    )


async def _send_pinned(client: httpx.AsyncClient, hop: _Hop, addresses: list[str]) -> httpx.Response:
    """Open the hop on the first checked address that accepts a connection (as httpcore would try a
    name's addresses in turn); a refused connection sent nothing, so trying the next is safe."""
    for address in addresses[:-1]:
        try:
            return await client.send(_pinned_request(client, hop, address), stream=True)
        except httpx.ConnectError as exc:
            log.info("fetch %s: %s did not connect (%s); trying the next address", hop.host, address, exc)
    return await client.send(_pinned_request(client, hop, addresses[-1]), stream=True)


def _redirect_target(hop: _Hop, response: httpx.Response) -> str:
    location = response.headers.get("location")
    if not location:
        raise UpstreamFailed(f"redirect without Location from {hop.url}")
    try:
        return str(hop.url.join(location))  # relative to the URL as the caller named it, not the pinned IP
    except (httpx.InvalidURL, ValueError) as exc:
        raise UpstreamFailed(f"{hop.url} redirects to an invalid URL {location!r}: {exc}", code="bad_redirect") from exc


async def _save(response: httpx.Response, target: Path, settings: FetchSettings) -> int:
    """Stream the body to ``target`` under the byte cap; returns its size."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_download_bytes:
        raise TooLarge(f"video is {int(declared)} bytes; the limit is {settings.max_download_bytes}", code="too_large")
    size = 0
    with target.open("wb") as sink:
        async for chunk in response.aiter_bytes(_CHUNK):
            size += len(chunk)
            if size > settings.max_download_bytes:
                raise TooLarge(f"video exceeds the limit of {settings.max_download_bytes} bytes", code="too_large")
            sink.write(chunk)
    return size


async def _download(
    url: str, target: Path, settings: FetchSettings, resolver: Resolver, verify: ssl.SSLContext | bool
) -> tuple[int, str | None]:
    timeout = httpx.Timeout(settings.fetch_timeout_s, connect=settings.fetch_connect_timeout_s)
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False, verify=verify) as client:
        for _hop in range(settings.max_redirects + 1):
            hop = _parse_http_url(url)
            addresses = await _checked_addresses(hop, settings, resolver)
            response = await _send_pinned(client, hop, addresses)
            try:
                if response.is_redirect:
                    url = _redirect_target(hop, response)
                    continue
                if response.status_code >= 400:
                    raise UpstreamFailed(
                        f"upstream answered HTTP {response.status_code} for {url}", code="upstream_status"
                    )
                return await _save(response, target, settings), response.headers.get("content-type")
            finally:
                await response.aclose()
    raise UpstreamFailed(f"more than {settings.max_redirects} redirects", code="too_many_redirects")


# ---- local files ------------------------------------------------------------------------------


def resolve_local_path(raw: str, settings: FetchSettings) -> Path:
    """Map a local path or ``file://`` URL to a file under one of ``DFS_LOCAL_ROOTS``.

    Details name the path as the caller wrote it, never as resolved: a symlink's target is the
    server's business.
    """
    roots = settings.local_root_paths
    if not roots:
        raise BadInput(
            "local paths and file:// URLs are disabled on this server: set DFS_LOCAL_ROOTS to the folders it may "
            "read, send an http(s) URL, or upload the file's bytes to POST /predict/upload",
            code="unsupported_scheme",
        )
    text = unquote(urlsplit(raw).path) if raw.startswith("file://") else raw
    if "\x00" in text:
        raise BadInput(f"path {raw!r} holds a NUL byte", code="invalid_path")
    try:
        path = Path(text).expanduser().resolve()
        inside = any(path == root or root in path.parents for root in roots)
        is_file = inside and path.is_file()
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. a name too long, a symlink loop
        raise BadInput(f"path {raw!r} cannot be used: {type(exc).__name__}", code="invalid_path") from exc
    if not inside:
        raise NotAllowed(f"{raw} is outside the allowed local roots", code="path_not_allowed")
    if not is_file:
        raise BadInput(f"no such file: {raw}", code="file_not_found")
    return path


def _is_local(file_path: str) -> bool:
    """A path, ``file://`` or a Windows drive path (``C:\\``) rather than a URL to fetch."""
    try:
        scheme = urlsplit(file_path).scheme.lower()
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise BadInput(f"invalid URL {file_path!r}: {exc}", code="invalid_url") from exc
    return scheme in ("", "file") or (len(scheme) == 1 and file_path[1:3] in (":\\", ":/"))


def _staging_dir(settings: FetchSettings, prefix: str) -> Path:
    """A fresh private folder under DFS_TEMP_DIR (created if missing), or the system temp."""
    if settings.temp_dir is not None:
        settings.temp_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=settings.temp_dir))


def _check_not_empty(size: int, source: str) -> None:
    if size == 0:
        raise NotAVideo(f"{source} is empty (0 bytes)", code="empty_file")


@asynccontextmanager
async def fetched_video(
    file_path: str,
    settings: FetchSettings,
    *,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
) -> AsyncIterator[FetchedVideo]:
    """Yield the caller's video as a local file; downloads are deleted on exit, whatever happens.

    ``resolver`` (default :func:`resolve_host`, the system's) and ``verify`` (default: httpx's CA
    bundle) are the network seams, for tests and embedders; the service passes neither.
    """
    file_path = file_path.strip()
    if not file_path:
        raise BadInput("file_path is empty", code="invalid_url")
    if _is_local(file_path):
        path = resolve_local_path(file_path, settings)
        size = path.stat().st_size
        if size > settings.max_download_bytes:
            raise TooLarge(f"file is {size} bytes; the limit is {settings.max_download_bytes}")
        _check_not_empty(size, file_path)
        yield FetchedVideo(path=path, size_bytes=size, source=file_path)
        return

    workdir = _staging_dir(settings, "dfs-fetch-")
    try:
        target = workdir / "video"
        try:
            async with asyncio.timeout(settings.fetch_timeout_s):
                size, content_type = await _download(file_path, target, settings, resolver or resolve_host, verify)
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
async def staged_upload(
    chunks: AsyncIterator[bytes], settings: FetchSettings, name: str
) -> AsyncIterator[FetchedVideo]:
    """Write an uploaded body to a temporary file under the same byte cap as downloads."""
    workdir = _staging_dir(settings, "dfs-upload-")
    try:
        target = workdir / "video"
        size = await write_upload(chunks, target, settings, name)
        yield FetchedVideo(path=target, size_bytes=size, source=name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def write_upload(chunks: AsyncIterator[bytes], target: Path, settings: FetchSettings, name: str) -> int:
    """Write an uploaded body to ``target`` under the download byte cap; an empty one is a 415.
    Returns its size. (Jobs stage uploads in their own folder, where they outlive the request.)"""
    size = 0
    with target.open("wb") as sink:
        async for chunk in chunks:
            size += len(chunk)
            if size > settings.max_download_bytes:
                raise TooLarge(f"upload exceeds the limit of {settings.max_download_bytes} bytes")
            sink.write(chunk)
    _check_not_empty(size, name)
    return size
