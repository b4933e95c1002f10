"""How large a request body may be: a few KB of JSON, or an upload up to the byte cap.

``POST /predict`` used to hold a 600 MB JSON body in memory before refusing it, and a chunked upload
was spooled whole. Now a body is refused at its route's limit without the rest being read:

- a declared ``Content-Length`` above the limit is answered by the app's middleware before the route
  runs (service/app.py), not a byte of the body read;
- a body without one (chunked) is counted as it arrives: JSON routes by FastAPI's own limiter
  (``include_router(..., max_body_size=...)``), whose 413 the error handlers turn into our JSON
  error; the upload route by its streaming parser (service/api/uploads.py).

Every such 413 carries ``Connection: close``: the client may still be sending, and the rest of its
body is not worth reading. The declared-length case is not left to FastAPI's limiter because that
one replaces the route's response with Starlette's plain-text 413, outside our error format.
"""

from __future__ import annotations

from service.api.uploads import UPLOAD_SLACK_BYTES
from service.config import Settings

UPLOAD_PATH = "/predict/upload"
#: routes whose body is a video upload (capped at DFS_MAX_DOWNLOAD_BYTES), not JSON
UPLOAD_PATHS = frozenset({UPLOAD_PATH, "/jobs/upload"})
CLOSE = {"Connection": "close"}


def body_limit(path: str, settings: Settings) -> int:
    """The most bytes a request body to ``path`` may hold (an upload's multipart framing included)."""
    return settings.max_download_bytes + UPLOAD_SLACK_BYTES if path in UPLOAD_PATHS else settings.max_json_bytes


def too_large_detail(path: str, settings: Settings) -> str:
    """The 413's detail, naming the limit's setting."""
    if path in UPLOAD_PATHS:
        return f"upload exceeds the limit of {settings.max_download_bytes} bytes (DFS_MAX_DOWNLOAD_BYTES)"
    return f"request body exceeds the limit of {settings.max_json_bytes} bytes (DFS_MAX_JSON_BYTES)"


def declares_too_much(path: str, content_length: str | None, settings: Settings) -> bool:
    """Whether a request's declared ``Content-Length`` is over its route's limit."""
    return bool(content_length and content_length.isdigit() and int(content_length) > body_limit(path, settings))
