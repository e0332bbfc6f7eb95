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
        """Send events as they come; what piles up while a write is in progress goes out as one write.

        Why: under load one socket write per token was ~10% of loom's CPU per run (bench/serving.py).
        At low load every event is still flushed on its own, as soon as it exists.
        """
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1024)  # bounded: a slow client slows the run

        async def produce() -> None:
            async with aclosing(self.body_iterator) as body:
                async for chunk in body:
                    await queue.put(chunk)
            await queue.put(None)

        producer = asyncio.ensure_future(produce())
        try:
            done = False
            while not done:
                chunks = [await queue.get()]
                while not queue.empty():
                    chunks.append(queue.get_nowait())
                done = chunks[-1] is None
                body = "".join(c for c in chunks if c is not None).encode()
                await send({"type": "http.response.body", "body": body, "more_body": not done})
            await producer
        finally:
            if not producer.done():
                producer.cancel()
                with suppress(asyncio.CancelledError):
                    await producer


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
