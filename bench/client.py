"""A raw asyncio HTTP/1.1 load driver for SSE endpoints: one fresh TCP connection per run.

Why not httpx: its keep-alive pool added seconds of client-side delay at c=64 (measured with this benchmark).
This client writes one request, reads the status line and headers, de-chunks the body incrementally and
splits it into SSE frames as bytes arrive, timing the first text delta. It parses JSON only until the first
text delta (and for every frame in `full` mode, used to verify a stack once); after that it classifies
frames by prefix, which keeps the driver cheap on a 2-core machine shared with the servers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

AGUI, OPENAI = "agui", "openai"
_TEXT = b'{"type":"TEXT_MESSAGE_CONTENT"'
_TEXT_CHUNK = b'{"type":"TEXT_MESSAGE_CHUNK"'
_FINISHED = b'{"type":"RUN_FINISHED"'
_ERROR = b'{"type":"RUN_ERROR"'


@dataclass
class RunResult:
    ok: bool = False
    status: int = 0
    ttft: float | None = None  # request start -> first non-empty text delta, seconds
    total: float | None = None  # request start -> last body byte, seconds
    body_bytes: int = 0  # de-chunked response body (the SSE text)
    wire_bytes: int = 0  # everything read from the socket: status line, headers, chunk framing, body
    frames: int = 0
    text_frames: int = 0
    terminal: str | None = None  # RUN_FINISHED | RUN_ERROR | [DONE]
    error: str | None = None
    text: str = ""  # assembled text (full mode only)
    types: dict = field(default_factory=dict)  # event type -> count (full mode only)


class _Sse:
    """Incremental SSE splitter; classifies each `data:` payload."""

    def __init__(self, kind: str, full: bool, result: RunResult, t0: float):
        self.kind, self.full, self.r, self.t0 = kind, full, result, t0
        self.buf = b""

    def feed(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            self._frame(buf[start:end])
            start = end + 2
        self.buf = buf[start:]

    def _frame(self, frame: bytes) -> None:
        payload = b"".join(line[5:].lstrip(b" ") for line in frame.split(b"\n") if line.startswith(b"data:"))
        if not payload:
            return
        r = self.r
        r.frames += 1
        if self.kind == OPENAI:
            self._openai(payload)
        else:
            self._agui(payload)

    def _first_text(self) -> None:
        if self.r.ttft is None:
            self.r.ttft = time.perf_counter() - self.t0

    def _agui(self, payload: bytes) -> None:
        r = self.r
        if self.full or r.ttft is None:
            event = json.loads(payload)
            kind = event.get("type")
            r.types[kind] = r.types.get(kind, 0) + 1
            if kind in ("TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CHUNK") and event.get("delta"):
                r.text_frames += 1
                r.text += event["delta"] if self.full else ""
                self._first_text()
            elif kind in ("RUN_FINISHED", "RUN_ERROR"):
                r.terminal = kind
                if kind == "RUN_ERROR":
                    r.error = f"RUN_ERROR {event.get('code')}: {event.get('message')}"
            return
        if payload.startswith(_TEXT) or payload.startswith(_TEXT_CHUNK):
            r.text_frames += 1
        elif payload.startswith(_FINISHED):
            r.terminal = "RUN_FINISHED"
        elif payload.startswith(_ERROR):
            r.terminal = "RUN_ERROR"
            r.error = payload[:300].decode(errors="replace")

    def _openai(self, payload: bytes) -> None:
        r = self.r
        if payload == b"[DONE]":
            r.terminal = "[DONE]"
            return
        if self.full or r.ttft is None:
            chunk = json.loads(payload)
            choices = chunk.get("choices") or []
            delta = (choices[0].get("delta") or {}).get("content") if choices else None
            if delta:
                r.text_frames += 1
                r.text += delta if self.full else ""
                self._first_text()
            return
        if b'"delta":{"content":"' in payload and b'"delta":{"content":""' not in payload:
            r.text_frames += 1


async def run_once(host: str, port: int, path: str, body: bytes, kind: str, *, full: bool = False,
                   timeout: float = 60.0) -> RunResult:
    """One POST on a fresh connection; never raises (errors land in RunResult.error)."""
    result = RunResult()
    t0 = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                         b"Accept: text/event-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (path.encode(), host.encode(), port, len(body)) + body)
            head = await reader.readuntil(b"\r\n\r\n")
            result.wire_bytes += len(head)
            lines = head.decode("latin-1").split("\r\n")
            result.status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            sse = _Sse(kind, full, result, t0)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    result.wire_bytes += len(size_line) + size + 2
                    if size == 0:
                        break
                    result.body_bytes += size
                    sse.feed(chunk[:-2])
            else:
                length = headers.get("content-length")
                data = await (reader.readexactly(int(length)) if length is not None else reader.read())
                result.wire_bytes += len(data)
                result.body_bytes += len(data)
                sse.feed(data)
                if result.status != 200:
                    result.error = f"HTTP {result.status}: {data[:300].decode(errors='replace')}"
            result.total = time.perf_counter() - t0
            if result.status == 200 and result.terminal in ("RUN_FINISHED", "[DONE]") and result.ttft is not None:
                result.ok = True
            elif result.error is None:
                result.error = f"status {result.status}, terminal {result.terminal}, ttft {result.ttft}"
    except TimeoutError:
        result.error = f"timeout after {timeout:.0f} s"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
    return result


@dataclass
class LoadResult:
    runs: list[RunResult]
    wall: float  # first start -> last end, seconds
    concurrency: int
    stopped_early: bool = False

    @property
    def ok(self) -> list[RunResult]:
        return [r for r in self.runs if r.ok]

    @property
    def errors(self) -> list[str]:
        return [r.error or "?" for r in self.runs if not r.ok]


async def run_load(host: str, port: int, path: str, bodies: list[bytes], kind: str, concurrency: int, *,
                   deadline_s: float, timeout: float = 60.0) -> LoadResult:
    """Closed loop: `concurrency` workers run the bodies in order until all are done or the deadline passes
    (no new run starts after it; runs in flight finish or time out)."""
    it = iter(bodies)
    results: list[RunResult] = []
    t0 = time.perf_counter()
    stop_at = t0 + deadline_s
    stopped = False

    async def worker() -> None:
        nonlocal stopped
        for body in it:
            if time.perf_counter() > stop_at:
                stopped = True
                return
            results.append(await run_once(host, port, path, body, kind, timeout=timeout))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(results, time.perf_counter() - t0, concurrency, stopped)


def bodies_for(make: Callable[[], bytes], n: int) -> list[bytes]:
    return [make() for _ in range(n)]
