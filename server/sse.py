"""An SSE response that ends the run the moment the client leaves.

Starlette's StreamingResponse stops iterating on disconnect but never closes the body iterator, so the graph
run underneath (and its model request) went on until the model's timeout. Here the body is closed explicitly,
which cancels the run through `aclosing` all the way down to LangGraph's node tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[str], headers: dict[str, str] | None = None):
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        stream = asyncio.ensure_future(self._stream(send))
        disconnect = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((stream, disconnect), return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
            stream.cancel()
            with suppress(asyncio.CancelledError, OSError):
                await stream

    async def _stream(self, send: Send) -> None:
        async with aclosing(self.body_iterator) as body:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
