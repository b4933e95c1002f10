"""uvicorn's h11 protocol with deadlines on reading a request's headers and on a stalled body.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but arms that timer only once
a response is complete, and cancels it as soon as any byte arrives: a connection that opens and
trickles its request line or headers a byte at a time stays open for good (300 such connections all
stayed). uvicorn 0.54 has no option for it (its options: ``timeout_keep_alive``,
``limit_concurrency``, ``h11_max_incomplete_event_size``, ...), so this subclass adds the one thing
missing, the way nginx's ``client_header_timeout`` does: from the moment a connection opens, or a
response on it completes, the next request's headers must be complete within
``DFS_HEADER_TIMEOUT_S``, else the connection is closed. Once the headers are in, a body that
stops arriving (no byte for ``DFS_BODY_TIMEOUT_S`` while the request still owes some, the way
nginx's ``client_body_timeout`` counts) gets a JSON 408 ``body_timeout`` and the connection is
closed, which also tells the app the client is gone, so a half-read upload stops holding its slot.
Time while uvicorn itself has paused reading (the app has not taken the last chunk yet), or while
a client that sent ``Expect: 100-continue`` waits for the app to ask for the body (curl does for
uploads over 1 MB; the route may still be queued), is not the client's and does not count.
Everything else is uvicorn's.

Why h11 rather than uvicorn's default httptools: h11 also bounds the bytes of an incomplete request
line + headers (``h11_max_incomplete_event_size``, ``DFS_MAX_HEADER_BYTES``), which httptools does
not, so the two limits together bound what a slow or endless header costs. Parsing speed does not
matter here: a request costs seconds of video analysis.

It also answers a request beyond ``DFS_MAX_CONNECTIONS`` (uvicorn's ``limit_concurrency``) the way
every other error leaves the service: JSON ``{"error": "too_many_connections", "detail", "request_id"}`` with
``Retry-After``, where uvicorn sends a plain-text "Service Unavailable". uvicorn picks that reply by
a module-level name in its h11 protocol module with no option or hook, so importing this module
rebinds that one name (:func:`over_connection_limit`); the ASGI app never sees such a request.

``python -m service`` passes this class to uvicorn by its import path (``http=...``), so worker
processes import it themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import get_settings

log = logging.getLogger(__name__)

IMPORT_PATH = "service.http_protocol:HeaderDeadlineH11Protocol"
RETRY_AFTER_S = 1


def _error_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail, "request_id": uuid.uuid4().hex}).encode()


async def over_connection_limit(scope: Any, receive: Any, send: Any) -> None:
    """The 503 for a request beyond ``DFS_MAX_CONNECTIONS``, as JSON like every other error."""
    body = _error_body(
        "too_many_connections", "the server is at its connection limit (DFS_MAX_CONNECTIONS); retry shortly"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


h11_impl.service_unavailable = over_connection_limit  # see the module docstring


class _Deadline:
    """One timer on the loop: ``arm`` (re)starts it while ``applies()`` holds, ``on_pass`` runs if it
    still holds when the time is up. The header and the body deadline are two of these."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, applies: Callable[[], bool], on_pass: Callable[[], None]
    ) -> None:
        self.seconds = seconds
        self._loop, self._applies, self._on_pass = loop, applies, on_pass
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.cancel()
        if self._applies():
            self._handle = self._loop.call_later(self.seconds, self._passed)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _passed(self) -> None:
        self._handle = None
        if self._applies():
            self._on_pass()


class HeaderDeadlineH11Protocol(H11Protocol):
    """:class:`H11Protocol` that closes a connection whose request headers, or body, stall."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()  # the DFS_* environment, as the app reads it
        self._header_deadline = _Deadline(
            self.loop, settings.header_timeout_s, lambda: self._awaiting_headers() and self._open(), self._headers_late
        )
        self._body_deadline = _Deadline(
            self.loop, settings.body_timeout_s, lambda: self._awaiting_body() and self._open(), self._body_stalled
        )

    def _open(self) -> bool:
        return not self.transport.is_closing()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"

    # --- the header deadline ----------------------------------------------------------------------

    def _awaiting_headers(self) -> bool:
        """h11 stays IDLE on the client's side until a request's headers are complete."""
        return self.conn.their_state is h11.IDLE

    def _headers_late(self) -> None:
        log.info(
            "closing connection from %s: no complete request headers within %g s (DFS_HEADER_TIMEOUT_S)",
            self._peer(),
            self._header_deadline.seconds,
        )
        self.transport.close()

    # --- the body deadline (idle time between body bytes) ---------------------------------------------

    def _awaiting_body(self) -> bool:
        """h11 is in SEND_BODY on the client's side until the request's body is complete."""
        return self.conn.their_state is h11.SEND_BODY

    def _body_stalled(self) -> None:
        cycle = self.cycle
        waiting_for_us = self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue)
        if waiting_for_us:  # uvicorn paused reading, or the client awaits our 100 Continue: not its silence
            self._body_deadline.arm()
            return
        log.info(
            "closing connection from %s: no request body bytes for %g s (DFS_BODY_TIMEOUT_S)",
            self._peer(),
            self._body_deadline.seconds,
        )
        self._answer_body_timeout()
        self.transport.close()  # uvicorn then tells the app: http.disconnect

    def _answer_body_timeout(self) -> None:
        """A JSON 408 written by h11 itself, unless the app has started its own response."""
        cycle = self.cycle
        if cycle is None or cycle.response_started or self.conn.our_state is not h11.SEND_RESPONSE:
            return
        body = _error_body(
            "body_timeout",
            f"the request body stopped arriving for {self._body_deadline.seconds:g} s (DFS_BODY_TIMEOUT_S)",
        )
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            data = self.conn.send(h11.Response(status_code=408, headers=headers))
            data += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # h11 refuses a reply in this state: closing is answer enough
            return
        cycle.response_started = cycle.response_complete = True  # the app's own reply, if any, is dropped
        self.transport.write(data)

    # --- uvicorn's hooks ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline.arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._awaiting_headers():  # a request is under way: its body and work have their own limits
            self._header_deadline.cancel()
        self._body_deadline.arm()  # every byte of body restarts the body's idle clock (off once it is complete)

    def on_response_complete(self) -> None:
        self._body_deadline.cancel()
        super().on_response_complete()  # may start a pipelined request, which leaves h11 IDLE no more
        self._header_deadline.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline.cancel()
        self._body_deadline.cancel()
        super().connection_lost(exc)
