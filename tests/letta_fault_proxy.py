"""A fault-injecting HTTP reverse proxy on loopback, between loom and a real Letta server.

Every request is forwarded as is, and its response (SSE included) is relayed byte by byte as it arrives, except
for the requests a scripted fault matches (method and a path pattern, each fault used once, in order):

    "503"       answer 503 without forwarding: the server never saw the request
    "reset"     reset the connection without forwarding (no response byte)
    "drop"      forward the request, wait until the server starts answering (it has taken the request), then
                reset the connection before any response byte reaches the client
    "502"       forward the request likewise, then answer 502 in place of the server's response (a gateway
                that lost it)

The server's answer to a dropped or replaced response is read to its end, as a gateway would let it finish.

Raw asyncio rather than an HTTP framework: a framework answers a failing handler with a 500, and cannot drop a
connection before the status line. Each request gets its own upstream connection and its response is sent with
`Connection: close`, so no HTTP framing (chunked SSE bodies included) needs parsing beyond the heads.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from dataclasses import dataclass

_HEAD_END = b"\r\n\r\n"


@dataclass
class Fault:
    method: str
    path: re.Pattern
    action: str  # "503" | "reset" | "drop"


@dataclass
class Record:
    method: str
    path: str
    body: bytes
    action: str  # "forwarded" or the fault's action
    status: int | None = None  # the upstream's status, when the request was forwarded


class FaultProxy:
    """Runs on its own event loop in a thread; the test thread scripts faults and reads the request log."""

    def __init__(self, upstream: str):
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream_host, self.upstream_port = host, int(port or 80)
        self.url = ""
        self._faults: list[Fault] = []
        self._log: list[Record] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="letta-fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------------------ test side

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(  # port 0: the system picks a free one, no race
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop).result(10)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def fail(self, method: str, path: str, action: str) -> None:
        """Apply `action` to the next request with this method whose path matches the regex `path`."""
        assert action in ("503", "reset", "drop", "502"), action
        with self._lock:
            self._faults.append(Fault(method.upper(), re.compile(path), action))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._log.clear()

    def requests(self, method: str | None = None, path: str = "") -> list[Record]:
        with self._lock:
            return [r for r in self._log if (method is None or r.method == method) and re.search(path, r.path)]

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ----------------------------------------------------------------------------------------- proxy side

    def _match(self, method: str, path: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.path.search(path):
                    self._faults.remove(fault)
                    return fault.action
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            head = await reader.readuntil(_HEAD_END)
            method, path = head.split(b" ", 2)[:2]
            method, path = method.decode(), path.decode()
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            action = self._match(method, path) or "forwarded"
            record = Record(method, path, body, action)
            with self._lock:
                self._log.append(record)
            if action == "503":
                await _answer(writer, 503, "Service Unavailable")
            elif action == "reset":
                _reset(writer)
                return
            else:
                await self._forward(head, body, record, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away: nothing to relay
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _forward(self, head: bytes, body: bytes, record: Record, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            up_writer.write(_with_close(head) + body)
            await up_writer.drain()
            response_head = await up_reader.readuntil(_HEAD_END)
            record.status = int(response_head.split(b" ", 2)[1])
            if record.action in ("drop", "502"):  # the server has taken the request; its answer is lost
                if record.action == "drop":
                    _reset(writer)
                else:
                    await _answer(writer, 502, "Bad Gateway")
                    writer.close()
                while await up_reader.read(65536):  # let the server's run finish, as it would without us
                    pass
                return
            writer.write(_with_close(response_head))
            await writer.drain()
            while chunk := await up_reader.read(65536):  # relayed as it comes: SSE must not be buffered
                writer.write(chunk)
                await writer.drain()
        finally:
            up_writer.close()


def _with_close(head: bytes) -> bytes:
    """The head with `Connection: close`: one request per connection, the body ends when the connection does."""
    lines = [line for line in head[: -len(_HEAD_END)].split(b"\r\n")
             if not line.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join([*lines, b"connection: close"]) + _HEAD_END


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    payload = b'{"detail":"%s (fault proxy)"}' % reason.encode()
    writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                 b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(payload), payload))
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0): the client sees the connection fail, not a clean end of response."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
