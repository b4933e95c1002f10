"""Why a stage refused a request: fetch, decode, faces and engines raise these, with no HTTP in them.

A stage knows what went wrong (the URL is invalid, the file is not a video, a model is unavailable)
and gives it a machine-readable ``code`` and a ``detail`` a person can read; it does not know it is
serving HTTP. The app layer (``service.errors``) gives each kind its HTTP status, and the CLI, the
jobs and the calibration tools report the same failure their own way. ``retry_after_s`` is the
stage's hint that trying again later may succeed (an engine coming back), which the app sends as
``Retry-After``.
"""

from __future__ import annotations


class DfsError(Exception):
    """The root of every error the ``service`` package raises (DFS: the deepfake service, as in its
    ``DFS_*`` settings). Its kinds also derive from the builtin a caller would expect."""


class DfsInputError(DfsError, ValueError):
    """A setting, file or argument the service cannot use."""


class DfsFailure(DfsError, RuntimeError):
    """Something the service needs did not work (an engine, a decoder, a store, a child process)."""


class RequestFailure(DfsError):
    """A failure that ends one request (never the server): ``code`` for machines, ``detail`` for people."""

    code: str = "internal"

    def __init__(self, detail: str, *, code: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s


class BadInput(RequestFailure):
    """The request itself is wrong: an invalid URL, an unsupported scheme, a missing local file."""

    code = "bad_request"


class NotAllowed(RequestFailure):
    """The request names something this server may not touch (an address or a folder outside its roots)."""

    code = "forbidden"


class TooLarge(RequestFailure):
    """The file, or a frame in it, is over a configured size limit."""

    code = "too_large"


class NotAVideo(RequestFailure):
    """The bytes are no video this service can decode (or hold no frame)."""

    code = "not_a_video"


class UpstreamFailed(RequestFailure):
    """The server the video had to come from failed (DNS, connection, status, redirects)."""

    code = "fetch_failed"


class UpstreamTimeout(RequestFailure):
    """The server the video had to come from was too slow."""

    code = "fetch_timeout"


class Unavailable(RequestFailure):
    """Something this request needs is not available now (an engine, capacity); it may be later."""

    code = "unavailable"


class InferenceFailed(RequestFailure):
    """An engine failed on input it accepted: a fault on this side, not the caller's."""

    code = "inference_failed"


__all__ = [
    "BadInput",
    "InferenceFailed",
    "NotAVideo",
    "NotAllowed",
    "RequestFailure",
    "TooLarge",
    "Unavailable",
    "UpstreamFailed",
    "UpstreamTimeout",
]
