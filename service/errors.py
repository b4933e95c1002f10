"""Errors that end a request with a JSON body ``{"error": code, "detail": text, "request_id"}``.

Pipeline stages raise :class:`ServiceError` subclasses with the HTTP status that fits the cause;
the app turns them into responses (``service/api/errors.py``). Anything else that escapes is a bug
and becomes a 500 with ``error="internal"``, logged with its traceback; the server keeps serving.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

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


class ServiceError(Exception):
    """A request-level failure with an HTTP status and a machine-readable code."""

    status_code: int = 500
    code: str = "internal"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code, code = 400, "bad_request"


class Forbidden(ServiceError):
    status_code, code = 403, "forbidden"


class TooLarge(ServiceError):
    status_code, code = 413, "too_large"


class NotAVideo(ServiceError):
    status_code, code = 415, "not_a_video"


class LimitExceeded(ServiceError):
    status_code, code = 422, "limit_exceeded"


class UpstreamFailed(ServiceError):
    status_code, code = 502, "fetch_failed"


class UpstreamTimeout(ServiceError):
    status_code, code = 504, "fetch_timeout"


class Unavailable(ServiceError):
    status_code, code = 503, "unavailable"


class InferenceFailed(ServiceError):
    status_code, code = 500, "inference_failed"
