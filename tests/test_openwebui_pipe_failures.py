"""The OpenWebUI pipe when things go wrong: every failure class its own message (a real loom for what it can
produce, a tiny fake loom for broken streams and silence), retries before a run started, and a stopped
generation cancelling the loom run."""

from __future__ import annotations

import asyncio
import json

import pytest

from loom.adapters.openwebui.pipe import Pipe
from loom.adapters.openwebui.transport import backoff_delay
from tests.conftest import new_id
from tests.openwebui_pipe_kit import (
    STARTED,
    Emitter,
    a_user,
    chat,
    dead_url,
    fake_loom,
    make_pipe,
    sse,
    u,
    wait_for_log,
)
from tests.openwebui_pipe_kit import pipe_loom as pipe_loom_fixture

loom = pipe_loom_fixture  # the module's server (a fixture shared by the pipe test modules)


async def run_failing(pipe: Pipe, **kwargs) -> tuple[str, Emitter]:
    emitter = Emitter()
    text, _ = await chat(pipe, [u("hi")], event_emitter=emitter, **kwargs)
    [note] = emitter.of("notification")
    assert note["type"] == "error"
    assert emitter.statuses()[-1]["done"] is True and emitter.statuses()[-1]["description"].startswith("Failed")
    return text, emitter


async def test_each_failure_has_its_own_message(loom, llm):
    messages = {}
    url = dead_url()
    messages["refused"], _ = await run_failing(make_pipe(url, retries=0))
    assert f"Cannot reach loom at {url} (connection refused)" in messages["refused"]

    messages["401"], _ = await run_failing(make_pipe(loom, api_key="wrong"))
    assert "loom refused the API key (HTTP 401, invalid_api_key)" in messages["401"]

    messages["422"], _ = await run_failing(make_pipe(loom), model="loom.moa", user=a_user(moa_layers=99))
    assert "loom rejected the request (HTTP 422, invalid_context at forwardedProps.context.layers)" in \
        messages["422"]

    llm.script({"status": 401})
    messages["run error"], _ = await run_failing(make_pipe(loom))
    assert "The run failed (LLM_AUTH): The model server refused the API key" in messages["run error"]

    async with fake_loom(sse(STARTED, "{not json")) as (url, _):
        messages["bad json"], _ = await run_failing(make_pipe(url))
    assert "loom sent an event that is not valid JSON" in messages["bad json"]

    async with fake_loom(sse(STARTED), hang=True) as (url, _):
        messages["timeout"], _ = await run_failing(make_pipe(url, timeout=0.5))
    assert "loom sent nothing for 0.5 s" in messages["timeout"]

    async with fake_loom(sse(STARTED)) as (url, requests):
        messages["cut"], _ = await run_failing(make_pipe(url))
    assert "The connection to loom closed before the run finished" in messages["cut"]
    assert len(requests) == 1  # the run had started: never sent twice

    firsts = {key: text.splitlines()[0] for key, text in messages.items()}
    assert len(set(firsts.values())) == len(firsts), firsts
    assert all(text.startswith("> ⚠️ **") for text in messages.values())


async def test_retries_with_backoff_before_anything_started(loom, llm):
    error = json.dumps({"error": {"code": "busy", "message": "restarting"}}).encode()
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(error), error))
    answer = sse(STARTED, {"type": "TEXT_MESSAGE_START", "messageId": "m", "role": "assistant"},
                 {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "Back."},
                 {"type": "TEXT_MESSAGE_END", "messageId": "m"},
                 {"type": "RUN_FINISHED", "threadId": "t", "runId": "r", "outcome": {"type": "success"}})
    emitter = Emitter()
    async with fake_loom(busy, answer) as (url, requests):
        text, _ = await chat(make_pipe(url, retries=2), [u("hi")], event_emitter=emitter)
    assert text == "Back." and len(requests) == 2
    assert any("trying again in" in s["description"] for s in emitter.statuses())

    url = dead_url()
    text, emitter = await run_failing(make_pipe(url, retries=2))
    assert len([s for s in emitter.statuses() if "trying again" in s["description"]]) == 2
    for attempt in range(6):
        step = min(8.0, 0.5 * 2**attempt)
        assert all(step / 2 <= backoff_delay(attempt) <= step for _ in range(20))


@pytest.mark.parametrize("how", ["closed", "cancelled"])
async def test_stopping_generation_cancels_the_loom_run(loom, llm, how):
    llm.script({"text": " ".join(f"word{i}" for i in range(300)), "token_delay_ms": 30})
    emitter, chat_id = Emitter(), new_id()
    stream = await make_pipe(loom).pipe({"model": "loom.agent", "messages": [u("Talk")], "stream": True},
                                        __user__=a_user(), __chat_id__=chat_id, __event_emitter__=emitter)
    assert (await anext(stream)).startswith("word0")
    if how == "closed":  # the consumer closes the generator
        await stream.aclose()
    else:  # OpenWebUI cancels the task that streams the answer
        consuming = asyncio.Event()

        async def consume():
            async for _ in stream:
                consuming.set()

        task = asyncio.create_task(consume())
        await consuming.wait()  # cancelled mid-stream, not before it began (however slow the machine)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    wait_for_log(loom, f"thread=openwebui-{chat_id}-agent", "outcome=cancelled")
    assert emitter.statuses()[-1] == {"description": "Stopped", "done": True}
    record = await asyncio.to_thread(llm.wait_request, lambda r: r["outcome"] is not None)
    assert record["outcome"] == "disconnected"

