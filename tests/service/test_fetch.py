"""The fetch stage against a real loopback HTTP server (SSRF rules, limits, cleanup)."""

from __future__ import annotations

import asyncio
import functools
import http.server
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.errors import RequestFailure, http_status
from service.pipeline import fetch
from tests.conftest import FileServer, _MediaHandler


def run_fetch(url: str, settings: Settings, **network: Any) -> tuple[int, Path]:
    async def go() -> tuple[int, Path]:
        async with fetch.fetched_video(url, settings, **network) as video:
            assert video.path.is_file()
            return video.size_bytes, video.path

    return asyncio.run(go())


def error_of(url: str, settings: Settings, **network: Any) -> RequestFailure:
    with pytest.raises(RequestFailure) as info:
        run_fetch(url, settings, **network)
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
    assert (http_status(error), error.code) == (403, "address_not_allowed")


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.8", "192.168.1.1", "169.254.169.254", "::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0"],
)
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
    assert (http_status(error), error.code) == (403, "address_not_allowed")
    followed, _ = run_fetch(file_server.url("redirect?to=/one_face.mp4"), Settings())
    assert followed == ok_size


def test_limits(file_server: FileServer) -> None:
    settings = Settings(allow_private_urls=True, max_download_bytes=1024 * 1024, fetch_timeout_s=1.5)
    assert http_status(error_of(file_server.url("large.mp4"), settings)) == 413
    assert http_status(error_of(file_server.url("stall"), settings)) == 504
    assert http_status(error_of(file_server.url("nothing-here.mp4"), settings)) == 502
    assert error_of(file_server.url("empty.mp4"), settings).code == "empty_file"


def test_local_roots(videos: dict[str, Path], tmp_path: Path) -> None:
    root = videos["one_face"].parent
    settings = Settings(local_roots=str(root))
    size, path = run_fetch(str(videos["one_face"]), settings)
    assert path == videos["one_face"] and path.exists(), "local files are used in place, never deleted"
    assert run_fetch(f"file://{videos['one_face']}", settings)[0] == size
    assert error_of(str(root / ".." / "elsewhere.mp4"), settings).code == "path_not_allowed"
    assert error_of(str(videos["one_face"]), Settings()).code == "unsupported_scheme"


# ---- DNS pinning: the address checked is the address connected to -------------------------------
#
# No real DNS here: ``socket.getaddrinfo`` (what asyncio, anyio and httpx resolve with) is replaced
# by a script, numeric hosts answer as the real call with AI_NUMERICHOST (no query), any other name
# fails. Two loopback servers share one port: [::1] stands in for a public host (the policy is told
# so), 127.0.0.1 is the internal server an attacker wants to reach and records every request.

_REAL_GETADDRINFO = socket.getaddrinfo


class FakeDns:
    """A scripted ``socket.getaddrinfo``: each lookup of a name takes its next answer (the last repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[list[str]]] = {}
        self.asked: list[str] = []

    def __call__(
        self, host: object, port: object, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list:  # noqa: A002
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in self.script:
            return _REAL_GETADDRINFO(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        self.asked.append(name)
        answers = self.script[name]
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        number = int(port or 0)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, number, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, number))
            for a in addresses
        ]


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


class _RecordingHandler(_MediaHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        super().do_GET()


class RecordingServer(http.server.ThreadingHTTPServer):
    """Serves the test media like ``file_server`` and records (path, Host) of every request."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], folder: Path) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.seen: list[tuple[str, str | None]] = []
        super().__init__(address, functools.partial(_RecordingHandler, directory=str(folder)))

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look up our own name (getfqdn)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def __enter__(self) -> RecordingServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class Servers:
    port: int
    public: RecordingServer  # [::1]: stands in for a public host
    internal: RecordingServer  # 127.0.0.1: must never receive a request unless private URLs are allowed

    def url(self, host: str, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


@pytest.fixture
def servers(videos: dict[str, Path]) -> Iterator[Servers]:
    folder = videos["one_face"].parent
    for _ in range(5):
        internal = RecordingServer(("127.0.0.1", 0), folder)
        try:
            public = RecordingServer(("::1", internal.server_address[1]), folder)
        except OSError:
            internal.server_close()
            continue
        with internal, public:
            yield Servers(internal.server_address[1], public, internal)
        return
    pytest.skip("no IPv6 loopback to stand in for a public host")


def treat_as_public(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    real_check = fetch._address_is_public
    monkeypatch.setattr(fetch, "_address_is_public", lambda a: a == address or real_check(a))


def test_the_checked_address_is_the_one_connected_to(
    servers: Servers, dns: FakeDns, monkeypatch: pytest.MonkeyPatch, videos: dict[str, Path]
) -> None:
    """DNS rebinding: the name answers a public address first and 127.0.0.1 ever after; the fetch
    resolves once, checks, and connects to what it checked (the Host header still names the host)."""
    treat_as_public(monkeypatch, "::1")
    dns.script["rebind.test"] = [["::1"], ["127.0.0.1"]]
    size, _ = run_fetch(servers.url("rebind.test", "/one_face.mp4"), Settings())
    assert size == videos["one_face"].stat().st_size
    assert servers.internal.seen == [], "a request reached the internal server"
    assert servers.public.seen == [("/one_face.mp4", f"rebind.test:{servers.port}")]
    assert dns.asked == ["rebind.test"], "resolved once, then pinned"


def test_rebinding_between_redirect_hops_is_refused_before_connecting(
    servers: Servers, dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The public answer redirects to the same name, which now resolves to 127.0.0.1: 403, and the
    internal server receives nothing (today's peer check answered 403 only after sending the GET)."""
    treat_as_public(monkeypatch, "::1")
    dns.script["rebind.test"] = [["::1"], ["127.0.0.1"]]
    error = error_of(servers.url("rebind.test", "/redirect?to=/one_face.mp4"), Settings())
    assert (http_status(error), error.code) == (403, "address_not_allowed")
    assert servers.internal.seen == [], "a request reached the internal server"
    assert servers.public.seen == [("/redirect?to=/one_face.mp4", f"rebind.test:{servers.port}")]


def test_every_resolved_address_must_be_public(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """One public and one internal answer: refused, nothing sent anywhere (the resolver is injected)."""
    treat_as_public(monkeypatch, "::1")

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("mixed.test", servers.port)
        return ["::1", "127.0.0.1"]

    error = error_of(servers.url("mixed.test", "/one_face.mp4"), Settings(), resolver=resolver)
    assert (http_status(error), error.code) == (403, "address_not_allowed")
    assert servers.internal.seen == [] and servers.public.seen == []


def test_private_urls_allowed_still_fetch_through_the_pinned_address(
    servers: Servers, dns: FakeDns, videos: dict[str, Path]
) -> None:
    """DFS_ALLOW_PRIVATE_URLS skips the policy, not the pinning: each hop is resolved by the fetch once."""
    dns.script["video.test"] = [["127.0.0.1"]]
    size, _ = run_fetch(servers.url("video.test", "/redirect?to=/one_face.mp4"), Settings(allow_private_urls=True))
    assert size == videos["one_face"].stat().st_size
    host = f"video.test:{servers.port}"
    assert servers.internal.seen == [("/redirect?to=/one_face.mp4", host), ("/one_face.mp4", host)]
    assert dns.asked == ["video.test", "video.test"]


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate for ``name`` (openssl CLI; the venv has no cryptography package)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_pinning_verifies_the_certificate_for_the_hostname(videos: dict[str, Path], tmp_path: Path) -> None:
    """Over TLS the connection goes to the pinned IP while SNI and certificate verification use the
    URL's hostname: the certificate names video.test only (no IP), so it verifies for that name and
    fails for another name that resolves to the same address."""
    cert, key = _self_signed(tmp_path, "video.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_tls.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment,return-value]
    trust = ssl.create_default_context(cafile=str(cert))

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    server = RecordingServer(("127.0.0.1", 0), videos["one_face"].parent)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    with server:
        port = server.server_address[1]
        settings = Settings(allow_private_urls=True)
        size, _ = run_fetch(f"https://video.test:{port}/one_face.mp4", settings, resolver=resolver, verify=trust)
        assert size == videos["one_face"].stat().st_size
        assert sni == ["video.test"] and server.seen == [("/one_face.mp4", f"video.test:{port}")]
        error = error_of(f"https://other.test:{port}/one_face.mp4", settings, resolver=resolver, verify=trust)
        assert http_status(error) == 502 and len(server.seen) == 1, "a certificate for another name was accepted"


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "::10.0.0.1",
        "64:ff9b::127.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b:1::808:808",
        "2002:7f00:1::1",
        "2002:a00:1::",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "ff02::1",
        "ff0e::1",
        "239.1.1.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "2001:db8::1",
        "3fff::1",
        "100.64.0.1",
        "fec0::1",
        "fe80::1%eth0",
    ],
)
def test_embedded_ipv4_and_special_ranges_are_not_public(address: str) -> None:
    assert not fetch._address_is_public(address)


@pytest.mark.parametrize("address", ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"])
def test_translated_public_ipv4_stays_public(address: str) -> None:
    """NAT64 (an IPv6-only cluster's DNS64), 6to4 and mapped forms of a public IPv4 address stay allowed."""
    assert fetch._address_is_public(address)


# ---- malformed input is a 400, never a 500 ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{root}/a\x00b.mp4", "invalid_path"),
        ("file://{root}/a%00b.mp4", "invalid_path"),
        ("http://" + "a" * 64 + ".test/x.mp4", "invalid_url"),
        ("http://a..b/x.mp4", "invalid_url"),
        ("http://.a/x.mp4", "invalid_url"),
        ("http://" + "a." * 127 + "test/x.mp4", "invalid_url"),
        ("http://[::1/x.mp4", "invalid_url"),
        ("http://[::1]x/x.mp4", "invalid_url"),
        ("http://exa mple.test/x.mp4", "invalid_url"),
        ("http://a\x00b.test/x.mp4", "invalid_url"),
    ],
)
def test_malformed_input_is_a_400(raw: str, code: str, videos: dict[str, Path], dns: FakeDns) -> None:
    root = videos["one_face"].parent
    error = error_of(raw.format(root=root), Settings(local_roots=str(root)))
    assert (http_status(error), error.code) == (400, code), error.detail
    assert dns.asked == [], "a malformed host must be refused before any lookup"


# ---- details help the caller and reveal nothing of the server ---------------------------------


def test_local_path_without_roots_says_how_to_enable_it(videos: dict[str, Path]) -> None:
    error = error_of(str(videos["one_face"]), Settings())
    assert (http_status(error), error.code) == (400, "unsupported_scheme")
    assert "DFS_LOCAL_ROOTS" in error.detail and "/predict/upload" in error.detail


def test_local_path_errors_echo_only_what_the_caller_sent(videos: dict[str, Path], tmp_path: Path) -> None:
    """A symlink under a root that points elsewhere is refused without naming where it points."""
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "internal-secret-folder" / "video.mp4"
    secret.parent.mkdir()
    secret.write_bytes(videos["one_face"].read_bytes())
    (root / "link.mp4").symlink_to(secret)
    settings = Settings(local_roots=str(root))
    error = error_of(str(root / "link.mp4"), settings)
    assert error.code == "path_not_allowed" and "internal-secret-folder" not in error.detail
    assert str(root / "link.mp4") in error.detail
    missing = error_of(str(root / "sub" / ".." / "missing.mp4"), settings)
    assert missing.code == "file_not_found" and str(root / "sub" / ".." / "missing.mp4") in missing.detail


@pytest.mark.parametrize(
    ("file_path", "code"),
    [
        ("http://127.0.0.1:8000/video.mp4", "address_not_allowed"),
        ("http://[::1]/video.mp4", "address_not_allowed"),
        ("http://10.1.2.3/video.mp4", "address_not_allowed"),
        ("ftp://example.com/video.mp4", "unsupported_scheme"),
        ("   ", "invalid_url"),
    ],
)
def test_refuse_early_needs_no_network_and_no_slot(file_path: str, code: str) -> None:
    """What /predict and POST /jobs refuse before waiting for a processing slot (a full line used
    to answer a private address 503 "retry later" instead of 403)."""
    with pytest.raises(RequestFailure) as refused:
        fetch.refuse_early(file_path, Settings())
    assert refused.value.code == code


def test_refuse_early_leaves_host_names_and_allowed_addresses_to_the_fetch() -> None:
    fetch.refuse_early("https://example.com/video.mp4", Settings())  # resolved (and pinned) when fetched
    fetch.refuse_early("http://127.0.0.1:8000/video.mp4", Settings(allow_private_urls=True))
