"""Bounds every request meets before any route runs: header size, then the caller's key, then the body size.

Why here and not per route: a route that declares a JSON body has it read and parsed by FastAPI before the
route's own authentication runs, so an anonymous 250 MB POST cost memory and seconds before its 401.
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loom.server.auth import authenticate
from loom.server.settings import Settings

_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The OpenAI-compatible API authenticates before reading its body itself, answering in OpenAI's error shape.
_OWN_AUTH_PREFIXES = ("/v1/",)


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_headers, max_body = self.settings.max_header_bytes, self.settings.max_body_bytes
        if sum(len(k) + len(v) for k, v in scope["headers"]) > max_headers:
            return await send_error(send, 431, "headers_too_large", f"The request headers exceed {max_headers} bytes "
                                    "(LOOM_MAX_HEADER_BYTES).")
        if scope["method"] not in _WITH_BODY:
            return await self.app(scope, receive, send)
        if not scope["path"].startswith(_OWN_AUTH_PREFIXES):
            try:
                authenticate(Request(scope), self.settings)
            except HTTPException as exc:
                return await send_error(send, exc.status_code, exc.detail["code"], exc.detail["message"],
                                        exc.headers)
        too_large = f"The request body exceeds {max_body} bytes (LOOM_MAX_BODY_BYTES)."
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_body:
            return await send_error(send, 413, "body_too_large", too_large, limit=max_body)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            size += len(message.get("body", b""))
            if size > max_body:
                return await send_error(send, 413, "body_too_large", too_large, limit=max_body)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the real channel (a streaming response waits on it for the disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def send_error(send: Send, status: int, code: str, message: str, headers: dict | None = None,
                     **extra) -> None:
    body = json.dumps({"error": {"code": code, "message": message, **extra}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
