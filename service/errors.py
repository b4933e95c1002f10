"""Errors that end a request with a JSON body ``{"error": code, "detail": text, "request_id"}``.

Pipeline stages raise :class:`ServiceError` subclasses with the HTTP status that fits the cause;
the app turns them into responses (``service/api/errors.py``). Anything else that escapes is a bug
and becomes a 500 with ``error="internal"``, logged with its traceback; the server keeps serving.
"""

from __future__ import annotations


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


class UpstreamFailed(ServiceError):
    status_code, code = 502, "fetch_failed"


class UpstreamTimeout(ServiceError):
    status_code, code = 504, "fetch_timeout"


class Unavailable(ServiceError):
    status_code, code = 503, "unavailable"


class InferenceFailed(ServiceError):
    status_code, code = 500, "inference_failed"
