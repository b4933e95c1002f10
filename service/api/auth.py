"""API keys: every route but an explicit open list needs one, once keys are configured.

Keys come from ``DFS_API_KEYS`` (a comma list) and ``DFS_API_KEYS_FILE`` (one key, or one
``sha256:HEX`` hash of a key, per line; ``service/api_keys.py``). The settings object replaces the
env keys by their SHA-256 hashes as it reads them and the file is read once at start-up, so the app
holds hashes only: a heap dump, a debug page or a log line of the settings shows no key.

The check is a middleware on the path prefix rather than a dependency on each route, so a route
added later (``/jobs``, say) is protected without anyone remembering to: only the paths listed in
:func:`open_paths` (probes, metrics, the docs, the web page) answer without a key. A caller sends the key as
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; a missing or wrong key is a 401 JSON error
(``unauthorized``) with ``WWW-Authenticate: Bearer``. The presented key is hashed and compared with
every configured hash by :func:`hmac.compare_digest`, without stopping at a match, so the time taken
says nothing about which key, or how much of one, matched.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.api_keys import hash_key, parse_entry, read_key_file
from service.config import Settings

log = logging.getLogger(__name__)

# Everything the docs page loads lives under this mount (service/api/docs.py), so one prefix opens it.
DOCS_ASSETS_PREFIX = "/docs/static/"
# Likewise the web page's script, stylesheet and icon (service/web/page.py); the page itself is "/".
WEB_ASSETS_PREFIX = "/web/"


def configured_hashes(settings: Settings) -> list[bytes]:
    """Every accepted key's SHA-256: DFS_API_KEYS (already hashed by the settings) plus DFS_API_KEYS_FILE."""
    hashes = [parse_entry(entry) for entry in settings.api_key_hashes]
    if settings.api_keys_file is not None:
        hashes += read_key_file(settings.api_keys_file)
    return list(dict.fromkeys(hashes))


def open_paths(settings: Settings) -> frozenset[str]:
    """Paths that answer without a key: probes, the docs, the web page and, when served on this port, /metrics."""
    paths = {"/", "/healthcheck", "/livez", "/docs", "/openapi.json"}
    if not settings.metrics_port:
        paths.add("/metrics")
    return frozenset(paths)


def is_open(path: str, open_exact: frozenset[str]) -> bool:
    return path in open_exact or path.startswith((DOCS_ASSETS_PREFIX, WEB_ASSETS_PREFIX))


def presented_keys(request: Request) -> list[str]:
    """The keys a request carries: ``Authorization: Bearer KEY`` and/or ``X-API-Key: KEY``."""
    keys = []
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        keys.append(credentials.strip())
    if api_key := request.headers.get("x-api-key", "").strip():
        keys.append(api_key)
    return keys


def matches(key: str, hashes: Iterable[bytes]) -> bool:
    """Whether ``key`` hashes to one of ``hashes``; compares against all of them, in constant time each."""
    digest = hash_key(key)
    found = False
    for expected in hashes:
        found |= hmac.compare_digest(digest, expected)
    return found


class ApiKeyMiddleware:
    """Refuses every request outside the open paths that carries no accepted key (pure ASGI, so
    streaming uploads pass through untouched once allowed)."""

    def __init__(self, app: ASGIApp, hashes: list[bytes], open_exact: frozenset[str]) -> None:
        self.app = app
        self.hashes = tuple(hashes)
        self.open_exact = open_exact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"], self.open_exact):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        keys = presented_keys(request)
        if any(matches(key, self.hashes) for key in keys):
            await self.app(scope, receive, send)
            return
        detail = (
            "invalid API key"
            if keys
            else "this route needs an API key: send Authorization: Bearer KEY or X-API-Key: KEY"
        )
        response = error_response(request, 401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _document_security(app: FastAPI, open_exact: frozenset[str]) -> None:
    """Declare both key schemes in the OpenAPI document, so /docs offers "Authorize" and sends the key."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        for path, operations in schema.get("paths", {}).items():
            if not is_open(path, open_exact):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
                    operation.setdefault("responses", {})["401"] = {"description": "missing or wrong API key"}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_api_keys(app: FastAPI, settings: Settings) -> None:
    """Protect ``app`` when keys are configured; otherwise say at start-up that the API is open."""
    hashes = configured_hashes(settings)
    if not hashes:
        log.warning("no API key configured (DFS_API_KEYS, DFS_API_KEYS_FILE): the API is open to every caller")
        return
    open_exact = open_paths(settings)
    app.add_middleware(ApiKeyMiddleware, hashes=hashes, open_exact=open_exact)
    _document_security(app, open_exact)
    log.info(
        "API keys: %d accepted; open without a key: %s, %s* and %s*",
        len(hashes),
        ", ".join(sorted(open_exact)),
        DOCS_ASSETS_PREFIX,
        WEB_ASSETS_PREFIX,
    )
