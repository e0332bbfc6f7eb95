"""Fault modes of the scripted LLM server: upstreams that break in every way loom must answer honestly.

A scripted response ``{"fault": NAME, ...}`` answers a chat request with one of:

``html``                  200 ``text/html`` (a proxy's error page)
``non_stream``            200 with a complete, non-streamed ``chat.completion`` JSON body to a streaming request
``empty``                 200 ``text/event-stream`` with an empty body
``wrong_shape``           200 SSE whose chunks are JSON but not chat completion chunks, then ``[DONE]``
``keepalive_only``        200 SSE of ``: ping`` comments (``keepalives``, default 3), then the end
``keepalive_forever``     200 SSE of ``: ping`` every ``interval_ms`` (default 200) until the client leaves
``endless``               200 SSE of content tokens every ``interval_ms`` (default 1), never finishing
``close_without_end``     HTTP/1.1 without chunked encoding, ``connection: close``: two content chunks, then
                          the socket closes (no ``finish_reason``, no ``[DONE]``)
``reset_before_headers``  the connection is reset (TCP RST) before any byte of a response

Status codes, stalls (``hang``, ``hang_after_tokens``) and endless tool calls (``tool_calls`` with ``repeat``)
are ordinary response specs (see tests/llm_server.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

FAULTS = ("html", "non_stream", "empty", "wrong_shape", "keepalive_only", "keepalive_forever", "endless",
          "close_without_end", "reset_before_headers")
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _chunk(content: str) -> bytes:
    body = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "scripted", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def serve_fault(send, rec: dict, spec: dict) -> None:
    """Answer one request with the fault ``spec["fault"]``; ``rec`` is its record in the request log."""
    fault = spec["fault"]
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    rec.update(first_byte_at=time.time(), status=200)
    if fault == "reset_before_headers":
        rec.update(first_byte_at=None, status=None)
        return _raw_close(send, b"", reset=True, rec=rec)
    if fault == "close_without_end":
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        return _raw_close(send, head + _chunk("partial") + _chunk(" answer"), reset=False, rec=rec)
    if fault == "html":
        return await _whole(send, rec, b"text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>")
    if fault == "non_stream":
        body = {"id": "chatcmpl-fault", "object": "chat.completion", "created": 0, "model": "scripted",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "not streamed"},
                             "finish_reason": "stop"}]}
        return await _whole(send, rec, b"application/json", json.dumps(body).encode())
    if fault == "empty":
        return await _whole(send, rec, b"text/event-stream", b"")
    if fault == "wrong_shape":
        body = b'data: {"hello": "world"}\n\ndata: [1, 2, 3]\n\ndata: {"choices": "none"}\n\ndata: [DONE]\n\n'
        return await _whole(send, rec, b"text/event-stream", body)
    if fault == "keepalive_only":
        return await _whole(send, rec, b"text/event-stream", b": ping\n\n" * spec.get("keepalives", 3))
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    interval = spec.get("interval_ms", 200 if fault == "keepalive_forever" else 1) / 1000
    rec["outcome"] = "hung" if fault == "keepalive_forever" else None
    i = 0
    while True:  # until the client leaves (the request's task is cancelled)
        body = b": ping\n\n" if fault == "keepalive_forever" else _chunk(f" t{i}")
        await send({"type": "http.response.body", "body": body, "more_body": True})
        i += 1
        await asyncio.sleep(interval)


async def _whole(send, rec: dict, content_type: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
    rec.update(ended_at=time.time(), outcome="ok")


def _raw_close(send, raw: bytes, reset: bool, rec: dict) -> None:
    """Write bytes past the ASGI server's HTTP framing, then close (or reset) the socket.

    uvicorn's `send` is a method of its request cycle, which holds the connection's transport; marking the
    response done keeps uvicorn from answering a 500 on the socket it no longer owns.
    """
    cycle = send.__self__
    transport = cycle.transport
    if reset:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        transport.abort()
    else:
        transport.write(raw)
        transport.close()
    cycle.response_started = cycle.response_complete = True
    rec.update(ended_at=time.time(), outcome="error")
