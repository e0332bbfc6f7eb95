"""What the OpenWebUI pipe tests share: a loom server with a proxy key, the pipe called the way OpenWebUI 0.12
calls it (`Pipe().pipe(body, __user__=..., __event_emitter__=..., ...)`) with a recording emitter, and a tiny
fake loom for the failures a real one does not produce on demand."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from contextlib import asynccontextmanager

import pytest

from loom.adapters.openwebui.pipe import Pipe
from tests.conftest import LoomServer, new_id

PROXY_KEY = "pipe-proxy-key"
WEATHER_SPEC = {"name": "get_weather", "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def pipe_loom(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("pipe"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_API_KEYS=f"{PROXY_KEY}=proxy", LOOM_MEMORY_EMBEDDINGS_URL=llm.url,
                        LOOM_MEMORY_EMBEDDINGS_MODEL="hashed-bow").start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------------------------ helpers


class Emitter:
    """A fake `__event_emitter__` that records every event."""

    def __init__(self):
        self.events: list[dict] = []

    async def __call__(self, event: dict) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.events if e["type"] == kind]

    def statuses(self) -> list[dict]:
        return self.of("status")


def make_pipe(loom_or_url, pipe_class=Pipe, **valves) -> Pipe:
    pipe = pipe_class()
    url = loom_or_url if isinstance(loom_or_url, str) else loom_or_url.url
    pipe.valves = pipe_class.Valves(loom_url=url, api_key=valves.pop("api_key", PROXY_KEY), **valves)
    return pipe


def a_user(user_id: str | None = None, **valves) -> dict:
    return {"id": user_id or f"owui-{uuid.uuid4().hex[:8]}", "name": "Ada", "email": "ada@example.org",
            "role": "user", "valves": Pipe.UserValves(**valves)}


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text.rstrip()}  # OpenWebUI stores content with trailing space stripped


async def chat(pipe: Pipe, messages: list[dict], model: str = "loom.agent", chat_id: str | None = "new",
               stream: bool = True, user: dict | None = None, **dunder) -> tuple[str, list]:
    """One request as OpenWebUI makes it; (the message text as OpenWebUI stores it, the items yielded)."""
    body = {"model": model, "messages": messages, "stream": stream}
    chat_id = new_id() if chat_id == "new" else chat_id
    user = user or a_user(f"owui-of-{chat_id}" if chat_id else None)  # a chat has one owner, as in OpenWebUI
    result = await pipe.pipe(body, __user__=user, __chat_id__=chat_id,
                             **{f"__{k}__": v for k, v in dunder.items()})
    if isinstance(result, str):
        return result, [result]
    items = [item async for item in result]
    # Streaming: each str is a delta. Not streaming: OpenWebUI joins the generator with str() (so a dict
    # would leak as its repr; the assertion below is what keeps that from happening).
    return "".join(str(i) for i in items), items


def block(call_id: str, name: str, arguments: str, result: str) -> str:
    return (f'<details type="tool_calls" done="true" id="{call_id}" name="{name}" arguments="{arguments}">\n'
            f"<summary>Tool Executed</summary>\n{result}\n</details>\n")


def call(call_id: str, name: str, args: dict) -> dict:
    return {"id": call_id, "name": name, "arguments": args}


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def wait_for_log(server: LoomServer, *needles: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if all(n in line for n in needles):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needles}:\n{server.log()[-3000:]}")


@asynccontextmanager
async def fake_loom(*responses: bytes, hang: bool = False):
    """A tiny HTTP server standing in for loom: answers the n-th request with responses[n] (the last one again
    after that), then closes the connection, or with `hang` keeps it open silently. Yields (url, requests)."""
    requests: list[bytes] = []
    handlers: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        requests.append(head + await reader.readexactly(length))
        writer.write(responses[min(len(requests), len(responses)) - 1])
        await writer.drain()
        if hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # the test is over
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", requests
    finally:
        for task in handlers:
            task.cancel()
        server.close()


def sse(*events: dict | str) -> bytes:
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            + "".join(f"data: {line}\n\n" for line in lines).encode())


STARTED = {"type": "RUN_STARTED", "threadId": "t", "runId": "r"}
