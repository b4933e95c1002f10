"""The body of ``POST /predict/upload``, streamed: the file part reaches the staging file as it arrives.

FastAPI's ``UploadFile`` parameter has Starlette's ``request.form()`` parse the body, which spools the
whole of it (to a temp file past 1 MB) before the route runs: a chunked upload without a
Content-Length filled 2.3 GB of /tmp before the byte cap could refuse it. Here python-multipart's
streaming parser (the one Starlette uses underneath) is fed ``request.stream()`` chunk by chunk and
the file part's bytes are handed on as they come, so
:func:`~service.pipeline.fetch.staged_upload` stops the upload at ``DFS_MAX_DOWNLOAD_BYTES`` with a
413, having written at most that much, and the whole body (other fields, framing) is capped at that
plus :data:`UPLOAD_SLACK_BYTES`. The parsing is the library's; written here is only the glue: picking
the part by its Content-Disposition name and queueing its data between the parser's callbacks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.api.disconnect import ClientDisconnected
from service.errors import BadRequest, ServiceError

UPLOAD_SLACK_BYTES = 1 << 20  # multipart framing and small fields around the file
# A 413 sent while the client is still sending: close the connection rather than read the rest.
_CLOSE = {"Connection": "close"}


class FileUpload:
    """The part named ``field`` of a ``multipart/form-data`` request body, read as it is iterated.

    :meth:`open` reads until that part's headers (so :attr:`filename` is known); :meth:`chunks` then
    yields its data and, once the part has ended, reads the rest of the body without keeping it.
    """

    def __init__(self, request: Request, field: str, max_file_bytes: int) -> None:
        media_type, params = parse_options_header(request.headers.get("content-type", ""))
        if media_type != b"multipart/form-data" or not params.get(b"boundary"):
            raise ServiceError(
                f"send the video as multipart/form-data with a file field {field!r} (curl -F {field}=@video.mp4)",
                code="invalid_request",
                status_code=422,
            )
        self.field = field.encode()
        self.filename: str | None = None
        self._max_file_bytes = max_file_bytes
        self._max_body_bytes = max_file_bytes + UPLOAD_SLACK_BYTES
        self._received = self._file_bytes = 0
        self._stream = request.stream().__aiter__()
        self._parser = MultipartParser(
            params[b"boundary"],
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )
        self._headers: dict[bytes, bytes] = {}
        self._name, self._value = bytearray(), bytearray()
        self._found = self._in_file = self._file_done = False
        self._pending: deque[bytes] = deque()

    async def open(self) -> FileUpload:
        """Read until the file part begins; a body without it is a 422."""
        while not self._found:
            if not await self._feed():
                raise ServiceError(
                    f"the multipart body has no file field {self.field.decode()!r}",
                    code="invalid_request",
                    status_code=422,
                )
        return self

    def _too_large(self) -> ServiceError:
        """413 with Connection: close: the client may still be sending, and the rest is not worth reading."""
        return ServiceError(
            f"upload exceeds the limit of {self._max_file_bytes} bytes (DFS_MAX_DOWNLOAD_BYTES)",
            code="too_large",
            status_code=413,
            headers=dict(_CLOSE),
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file part's bytes, as they arrive; then the rest of the body is read and dropped."""
        while True:
            while self._pending:
                piece = self._pending.popleft()
                self._file_bytes += len(piece)
                if self._file_bytes > self._max_file_bytes:  # staged_upload counts too; this one closes
                    raise self._too_large()
                yield piece
            if self._file_done:
                break
            if not await self._feed():
                raise BadRequest("the multipart body ended inside the file part", code="malformed_upload")
        while await self._feed():  # the closing boundary (and any later field): read so the connection stays usable
            self._pending.clear()

    async def _feed(self) -> bool:
        """Parse the next chunk of the body under the byte cap; False at its end."""
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            return False
        except ClientDisconnect as exc:
            raise ClientDisconnected("the client disconnected during the upload") from exc
        self._received += len(chunk)
        if self._received > self._max_body_bytes:
            raise self._too_large()
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadRequest(f"malformed multipart body: {exc}", code="malformed_upload") from exc
        return True

    # --- python-multipart's callbacks: (data, start, end) slices of the chunk being parsed ---------

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._name).lower()] = bytes(self._value)
        self._name, self._value = bytearray(), bytearray()

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == self.field and not self._found:
            self._found = self._in_file = True
            filename = params.get(b"filename")
            self.filename = filename.decode("utf-8", "replace") if filename else None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pending.append(data[start:end])

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file, self._file_done = False, True
