"""Errors that end a request with a JSON body ``{"error": code, "detail": text, "request_id"}``.

Pipeline stages raise the kinds of :mod:`service.pipeline.failures`, which carry no HTTP status;
:func:`http_status` gives each kind its status here, in the app layer, and the app's own failures
(an unknown job, a full queue) are :class:`ServiceError` with the status their raiser chose. The
app turns both into responses (``service/api/errors.py``). Anything else that escapes is a bug and
becomes a 500 with ``error="internal"``, logged with its traceback; the server keeps serving.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from service.pipeline.failures import BadInput as BadRequest
from service.pipeline.failures import (
    InferenceFailed,
    NotAVideo,
    RequestFailure,
    TooLarge,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
)
from service.pipeline.failures import NotAllowed as Forbidden

# An absolute POSIX path not inside a word or URL (``http://host/a`` keeps its ``/a``).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/[^\s'\"`,;:()<>\[\]{}]+")


def redact_paths(text: str, known: Mapping[str, Path | None] | None = None) -> str:
    """``text`` without server-side file paths, for error details strangers read.

    Each ``known`` folder becomes its setting's name (``DFS_MODEL_REPOSITORY/ftcn/1/manifest.json``
    still tells an operator where to look); any other absolute path becomes ``<path>``. Meant for
    text the server wrote: a caller's own URL is echoed as sent, never passed through here.
    """
    for name, path in (known or {}).items():
        if path is None:
            continue
        for form in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
            if form not in ("", ".", "/"):
                text = re.sub(rf"(?<![\w.-]){re.escape(form)}(?![\w-])", name, text)
    return _ABSOLUTE_PATH.sub("<path>", text)


class ServiceError(RequestFailure):
    """A failure of the app itself (jobs, uploads, limits), raised with the HTTP status that fits it."""

    status_code: int = 500

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail, code=code, retry_after_s=retry_after_s)
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}  # e.g. Connection: close on a 413 while the client still sends


class LimitExceeded(ServiceError):
    status_code, code = 422, "limit_exceeded"


#: the HTTP status of each kind of stage failure (the most specific kind listed wins)
STATUS_OF_KIND: dict[type[RequestFailure], int] = {
    BadRequest: 400,
    Forbidden: 403,
    TooLarge: 413,
    NotAVideo: 415,
    InferenceFailed: 500,
    UpstreamFailed: 502,
    Unavailable: 503,
    UpstreamTimeout: 504,
}


def http_status(failure: RequestFailure) -> int:
    """The status a failure answers with: its own for the app's, its kind's for a stage's, else 500."""
    if isinstance(failure, ServiceError):
        return failure.status_code
    for kind in type(failure).__mro__:
        if kind in STATUS_OF_KIND:
            return STATUS_OF_KIND[kind]
    return 500


def http_headers(failure: RequestFailure) -> dict[str, str]:
    """``Retry-After`` where the failure says a later try may succeed, and an app failure's own headers."""
    headers = dict(failure.headers) if isinstance(failure, ServiceError) else {}
    if failure.retry_after_s is not None:
        headers["Retry-After"] = str(failure.retry_after_s)
    return headers


__all__ = [
    "BadRequest",
    "Forbidden",
    "InferenceFailed",
    "LimitExceeded",
    "NotAVideo",
    "RequestFailure",
    "ServiceError",
    "TooLarge",
    "Unavailable",
    "UpstreamFailed",
    "UpstreamTimeout",
    "http_headers",
    "http_status",
    "redact_paths",
]
