"""An SSE response that ends the run the moment the client leaves.

Starlette's StreamingResponse stops iterating on disconnect but never closes the body iterator, so the graph
run underneath (and its model request) went on until the model's timeout. Here the body is closed explicitly,
which cancels the run through `aclosing` all the way down to LangGraph's node tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, suppress

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None] | None = None,
                 on_disconnect: Callable[[], object] | None = None):
        self.body_iterator = body
        self.on_close = on_close
        self.on_disconnect = on_disconnect
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`on_close` runs however the response ends: finished, client gone, or never started."""
        stream = asyncio.ensure_future(self._stream(send))
        disconnect = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((stream, disconnect), return_when=asyncio.FIRST_COMPLETED)
            if disconnect.done() and self.on_disconnect is not None:
                self.on_disconnect()  # at once: the body's own cancellation below may take a while to get there
        finally:
            disconnect.cancel()
            stream.cancel()
            with suppress(asyncio.CancelledError, OSError):
                await stream
            if self.on_close is not None:
                self.on_close()

    async def _stream(self, send: Send) -> None:
        """Send events as they come; what piles up while a write is in progress goes out as one write.

        Why: under load one socket write per token was ~10% of loom's CPU per run (bench/serving.py).
        At low load every event is still flushed on its own, as soon as it exists.
        """
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        # Unbounded, but one run's output is bounded by the model's token limit.
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def produce() -> None:
            try:
                async with aclosing(self.body_iterator) as body:
                    async for chunk in body:
                        queue.put_nowait(chunk)
            finally:
                queue.put_nowait(None)  # the end, however the body ended

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
