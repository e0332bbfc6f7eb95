"""uvicorn's HTTP/1.1 protocol (httptools), refusing an oversized request head while it is still arriving.

The guard middleware (server/guard.py) answers 431 for headers over LOOM_MAX_HEADER_BYTES, but only once uvicorn
has read the whole header block: a client sending one endless header would have uvicorn buffer it all. Here the
bytes of an unfinished head are counted as they arrive, and past the limit (plus room for the request line and
framing, which the guard does not count) the connection gets the guard's 431 and is closed. It is counted in
`loom_http_rejections_total` like the app's own.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from loom.graphs import telemetry
from loom.server.settings import get_settings

REQUEST_LINE_ROOM = 16 * 1024  # the request line, ": " and line ends: the guard counts names and values only


class BoundedHeadProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._max_header_bytes = get_settings().max_header_bytes
        self._head_bytes = 0
        self._in_head = True  # a new connection starts with a request head

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._in_head = 0, True

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self._max_header_bytes + REQUEST_LINE_ROOM:
            self._refuse()

    def _refuse(self) -> None:
        if telemetry.enabled:  # the app never sees this request: count it as the app counts its own 431s
            telemetry.REJECTIONS.labels("431").inc()
        body = json.dumps({"error": {"code": "headers_too_large", "message": f"The request headers exceed "
                                     f"{self._max_header_bytes} bytes (LOOM_MAX_HEADER_BYTES)."}}).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()
