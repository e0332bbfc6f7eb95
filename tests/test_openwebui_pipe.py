"""The OpenWebUI pipe against a real loom server (scripted LLM, proxy key), driven the way OpenWebUI 0.12 calls
it: `Pipe().pipe(body, __user__=..., __event_emitter__=..., ...)` with a recording emitter, a fake
`__event_call__` and fake `__tools__`. Also the rendered single file, loaded as OpenWebUI loads it (exec into a
fresh module), from `GET /openwebui/pipe.py` and from `loom pipe --output`.

What needs a real OpenWebUI (the functions API, socket.io events, UI-mode chats) is in test_openwebui_e2e.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import socket
import subprocess
import sys
import time
import types
import uuid
from contextlib import asynccontextmanager
from types import SimpleNamespace

import httpx
import pytest
from loom.adapters.openwebui import history, render
from loom.adapters.openwebui.bundle import REWRITTEN, PipeRenderError, check_pipe, render_pipe
from loom.adapters.openwebui.pipe import Pipe
from loom.adapters.openwebui.transport import backoff_delay

from tests.conftest import BIN, REPO, LoomServer, new_id

PROXY_KEY = "pipe-proxy-key"
WEATHER_SPEC = {"name": "get_weather", "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def loom(llm, tmp_path_factory):
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


# --------------------------------------------------------------------------------------------- manifold


async def test_pipes_lists_the_graphs_live_and_one_model_when_loom_is_down(loom):
    pipe = make_pipe(loom)
    models = await pipe.pipes()
    assert {"agent", "moa", "memory"} <= {m["id"] for m in models}
    assert all(m["name"] == m["id"] for m in models) and pipe.name == "loom/"

    pipe.valves = Pipe.Valves(loom_url=dead_url())
    [model] = await pipe.pipes()
    assert model["id"] == "unavailable" and "loom is unreachable" in model["name"]

    pipe.valves = Pipe.Valves(loom_url=loom.url, api_key="wrong")
    [model] = await pipe.pipes()
    assert model["id"] == "unavailable" and "refused the API key" in model["name"]


# ---------------------------------------------------------------------------------------------- rendering


async def test_text_streams_and_status_ends_done(loom, llm):
    llm.script({"text": "Hello there, how can I help?"})
    emitter, user = Emitter(), a_user()
    text, items = await chat(make_pipe(loom), [u("hi")], event_emitter=emitter, user=user)
    assert text == "Hello there, how can I help?"
    assert len(items) > 1 and all(isinstance(i, str) for i in items)  # streamed as it came
    statuses = emitter.statuses()
    assert statuses[-1]["done"] is True and not any(s["done"] for s in statuses[:-1])
    wait_for_log(loom, f"user={user['id']}", "outcome=success")  # the OpenWebUI user reached loom


async def test_backend_tool_call_is_an_openwebui_tool_call_block(loom, llm):
    llm.script({"tool_calls": [call("call_calc", "calculator", {"expression": "6*7"})]}, {"text": "It is 42."})
    emitter = Emitter()
    text, _ = await chat(make_pipe(loom), [u("6*7?")], event_emitter=emitter)
    assert text == block("call_calc", "calculator", "{&quot;expression&quot;: &quot;6*7&quot;}", "42") + "\nIt is 42."
    assert emitter.statuses()[-1]["description"].startswith("1 tool call · ")

    llm.script({"tool_calls": [call("call_calc2", "calculator", {"expression": "1+1"})]}, {"text": "2."})
    text, _ = await chat(make_pipe(loom, show_tool_calls=False), [u("1+1?")])
    assert text == "2."


@pytest.mark.parametrize("unit, shown", [("C", "Lyon: 21°C"), ("F", "Lyon: 70°F")])
async def test_openwebui_tools_are_frontend_tools_run_with_the_users_valves(loom, llm, unit, shown):
    async def get_weather(city: str, __user__: dict) -> str:
        return f"{city}: 21°C" if __user__["valves"].unit == "C" else f"{city}: 70°F"

    async def search_web(query: str) -> str:
        raise AssertionError("a built-in tool must not be offered")

    tools = {  # what OpenWebUI passes: callables with the reserved arguments (the user's tool valves) bound
        "get_weather": {"tool_id": "weather", "spec": WEATHER_SPEC, "metadata": {"file_handler": False},
                        "callable": functools.partial(get_weather, __user__={"valves": SimpleNamespace(unit=unit)})},
        "search_web": {"tool_id": "builtin", "type": "builtin", "callable": search_web,
                       "spec": {"name": "search_web", "description": "Search.", "parameters": {"type": "object"}}},
    }
    llm.script({"tool_calls": [call("call_w", "get_weather", {"city": "Lyon"})]}, {"text": f"It is {shown[6:]}."})
    text, _ = await chat(make_pipe(loom), [u("Weather in Lyon?")], tools=tools)

    first, second = llm.requests()
    offered = [t["function"]["name"] for t in first["body"]["tools"]]
    assert "get_weather" in offered and "search_web" not in offered
    assert second["body"]["messages"][-1] == {"role": "tool", "tool_call_id": "call_w", "content": shown}
    assert text == block("call_w", "get_weather", "{&quot;city&quot;: &quot;Lyon&quot;}", shown) + \
        f"\nIt is {shown[6:]}."


async def test_builtin_tools_are_offered_when_the_valve_says_so(loom, llm):
    async def search_web(query: str) -> str:
        return "nothing"

    tools = {"search_web": {"type": "builtin", "callable": search_web,
                            "spec": {"name": "search_web", "description": "Search.", "parameters": {}}}}
    llm.script({"text": "ok"})
    await chat(make_pipe(loom, offer_builtin_tools=True), [u("hi")], tools=tools)
    assert "search_web" in [t["function"]["name"] for t in llm.requests()[0]["body"]["tools"]]


async def test_a_failing_or_unknown_tool_is_an_error_result_and_rounds_are_bounded(loom, llm):
    async def broken(city: str) -> str:
        raise RuntimeError("weather service down")

    tools = {"get_weather": {"spec": WEATHER_SPEC, "callable": broken}}
    llm.script({"tool_calls": [call("c1", "get_weather", {"city": "Oslo"})]},
               {"tool_calls": [call("c2", "get_weather", {"city": "Oslo"})]},
               {"tool_calls": [call("c3", "get_weather", {"city": "Oslo"})]})
    text, _ = await chat(make_pipe(loom, max_tool_rounds=2), [u("Weather?")], tools=tools)
    assert text.count("Error: RuntimeError: weather service down") == 2  # two rounds, then the bound
    assert "more than 2 rounds of tool calls" in text
    assert llm.requests()[1]["body"]["messages"][-1]["content"] == "Error: RuntimeError: weather service down"
    assert len(llm.requests()) == 3


@pytest.mark.parametrize("approve", [True, False])
async def test_confirmation_interrupt_becomes_openwebuis_dialog(loom, llm, approve):
    llm.script({"tool_calls": [call("call_del", "delete_records", {"table": "sessions"})]},
               {"text": "Done." if approve else "Not deleted."})
    asked = []

    async def event_call(request: dict):
        asked.append(request)
        return approve

    text, _ = await chat(make_pipe(loom), [u("Clear the sessions table")], event_call=event_call)
    assert asked == [{"type": "confirmation", "data": {"title": "Allow delete_records?",
                                                       "message": 'Allow delete_records({"table": "sessions"})?'}}]
    told = llm.requests()[1]["body"]["messages"][-1]
    if approve:
        assert told["content"] == "deleted all records of sessions"
        assert text == block("call_del", "delete_records", "{&quot;table&quot;: &quot;sessions&quot;}",
                             "deleted all records of sessions") + "\nDone."
    else:
        assert told["content"] == "The user rejected this tool call."
        assert text.endswith("The user rejected this tool call.\n</details>\n\nNot deleted.")


@pytest.mark.parametrize("event_call", [None, "disconnected"])
async def test_without_a_dialog_the_pipe_says_what_waits_and_declines(loom, llm, event_call):
    async def api_mode(request: dict):  # what OpenWebUI's __event_call__ answers for API callers
        return {"error": "Client session disconnected."}

    llm.script({"tool_calls": [call("call_del", "delete_records", {"table": "users"})]}, {"text": "I did not."})
    emitter = Emitter()
    text, _ = await chat(make_pipe(loom), [u("Delete all users")], event_emitter=emitter,
                         event_call=api_mode if event_call else None)
    assert '> ⏸ **Needs approval**\n> Allow delete_records({"table": "users"})? — this client cannot show ' \
           "OpenWebUI's confirmation dialog, so it was declined." in text
    told = llm.requests()[1]["body"]["messages"][-1]["content"]
    assert told.startswith("The user rejected this tool call. Reason: The user could not be asked")
    assert text.endswith("I did not.") and emitter.statuses()[-1]["done"] is True


# ------------------------------------------------------------------------------------------------ history


async def test_regenerate_forks_and_a_next_turn_duplicates_nothing(loom, llm):
    pipe, chat_id = make_pipe(loom), new_id()
    llm.script({"text": "First answer."}, {"text": "Second answer."}, {"text": "Third."})
    first, _ = await chat(pipe, [u("Tell me a joke")], chat_id=chat_id)
    regenerated, _ = await chat(pipe, [u("Tell me a joke")], chat_id=chat_id)  # the last answer dropped
    assert (first, regenerated) == ("First answer.", "Second answer.")
    sent = llm.requests()[1]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [("user", "Tell me a joke")]  # forked, not appended

    await chat(pipe, [u("Tell me a joke"), a(regenerated), u("Another one")], chat_id=chat_id)
    sent = llm.requests()[2]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "Tell me a joke"), ("assistant", "Second answer."), ("user", "Another one")]


async def test_the_pipes_blocks_come_back_as_tool_messages_not_text(loom, llm):
    pipe, chat_id = make_pipe(loom), new_id()
    llm.script({"reasoning": "Multiply them.", "tool_calls": [call("call_m", "calculator", {"expression": "6*7"})]},
               {"text": "It is 42."}, {"text": "You asked for 6*7."})
    first, _ = await chat(pipe, [u("6*7?")], chat_id=chat_id)
    assert re.match(r'<details type="reasoning" done="true" duration="(\d+)">\n<summary>Thought for \1 seconds'
                    r'</summary>\n> Multiply them.\n</details>\n\n<details type="tool_calls"', first), first

    await chat(pipe, [u("6*7?"), a(first), u("What did I ask?")], chat_id=chat_id)
    sent = llm.requests()[2]["body"]["messages"]
    assert not any("<details" in json.dumps(m) for m in sent)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[2]["tool_calls"][0]["id"] == "call_m" and sent[3] == {"role": "tool", "tool_call_id": "call_m",
                                                                      "content": "42"}
    assert sent[4]["content"] == "It is 42."


def test_history_ids_are_deterministic_and_blocks_parse_back():
    result = 'He said "<hi>" & left'
    content = ("Let me check.\n\n" + render.tool_call_block("c1", "echo", '{"q": "a \\"b\\" <c>"}', result)
               + "\nDone.\n\n" + render.error_text("loom is unreachable", "Cannot reach loom."))
    messages = [{"role": "system", "content": "Be brief."}, u("hi"), a(content), u("again")]
    converted = history.to_agui_messages(messages, "chat-1")
    assert converted == history.to_agui_messages(messages, "chat-1")  # the same history, the same ids
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert converted[2]["content"] == "Let me check."
    assert converted[2]["toolCalls"] == [{"id": "c1", "type": "function",
                                          "function": {"name": "echo", "arguments": '{"q": "a \\"b\\" <c>"}'}}]
    assert converted[3]["content"] == result and converted[3]["toolCallId"] == "c1"
    assert converted[4]["content"] == "Done."  # the pipe's error note is not conversation
    ids = [m["id"] for m in converted]
    assert len(set(ids)) == len(ids)
    edited = history.to_agui_messages([*messages[:3], u("something else")], "chat-1")
    assert [m["id"] for m in edited][:-1] == ids[:-1] and edited[-1]["id"] != ids[-1]
    assert history.to_agui_messages(messages, "chat-2")[0]["id"] != ids[0]


def test_images_are_content_parts_and_files_context_unless_already_in_the_chat():
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}}]}
    [converted] = history.to_agui_messages([image], "c")
    assert converted["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "data", "value": "iVBOR", "mimeType": "image/png"}},
        {"type": "image", "source": {"type": "url", "value": "https://x.test/cat.jpg"}}]
    files = [{"type": "file", "name": "notes.txt", "file": {"data": {"content": "The launch is on Friday."}}},
             {"type": "file", "name": "seen.txt", "file": {"data": {"content": "Already quoted text."}}},
             {"type": "file", "name": "photo.png", "file": {"data": {}}}]
    context = history.file_context(files, [u("<source>Already quoted text.</source> When?")])
    assert context == [{"description": "Text of the attached file notes.txt", "value": "The launch is on Friday."}]


async def test_attached_file_text_reaches_the_model(loom, llm):
    llm.script({"text": "On Friday."})
    files = [{"type": "file", "name": "notes.txt", "file": {"data": {"content": "The launch is on Friday."}}}]
    await chat(make_pipe(loom), [u("When is the launch?")], files=files)
    system = llm.requests()[0]["body"]["messages"][0]["content"]
    assert "Text of the attached file notes.txt: The launch is on Friday." in system


# -------------------------------------------------------------------------------------- tasks, modes, valves


async def test_background_tasks_are_answered_at_once_without_a_model(loom, llm):
    pipe = make_pipe(dead_url())  # not even loom is asked
    task_body = {"messages": [u("How do tides work on the Atlantic coast of France, and when are they highest?"),
                              a("They follow the moon.")]}
    title, _ = await chat(pipe, [u("### Task: Generate a title ...")], model="loom.moa", stream=False,
                          task="title_generation", task_body=task_body)
    assert json.loads(title) == {"title": "How do tides work on the Atlantic coast of France, and when…"}
    for task, expected in (("tags_generation", {"tags": []}), ("follow_up_generation", {"follow_ups": []}),
                           ("query_generation", {"queries": []})):
        answer, _ = await chat(pipe, [u("### Task")], model="loom.moa", task=task, task_body=task_body)
        assert json.loads(answer) == expected
    assert llm.requests() == []


async def test_non_streaming_requests_get_strings_only(loom, llm):
    llm.script({"tool_calls": [call("call_ns", "calculator", {"expression": "2+2"})]}, {"text": "Four."})
    text, items = await chat(make_pipe(loom), [u("2+2?")], stream=False, event_emitter=Emitter())
    assert items and all(isinstance(i, str) for i in items)
    assert text == block("call_ns", "calculator", "{&quot;expression&quot;: &quot;2+2&quot;}", "4") + "\nFour."


async def test_user_valves_reach_only_graphs_that_have_the_setting(loom, llm):
    user = a_user(moa_layers=0)
    llm.script({"text": "Directly."})
    text, _ = await chat(make_pipe(loom), [u("hi")], model="loom.moa", user=user)
    assert text == "Directly." and len(llm.requests()) == 1  # no proposer layer: the aggregator alone
    llm.script({"text": "Agent."})
    text, _ = await chat(make_pipe(loom), [u("hi")], model="loom.agent", user=user)  # agent has no `layers`
    assert text == "Agent."


async def test_moa_progress_and_proposer_answers(loom, llm):
    llm.script({"text": "Paris."}, {"text": "It is Paris."}, {"text": "Paris, France."}, {"text": "Paris."})
    emitter = Emitter()
    text, _ = await chat(make_pipe(loom, show_moa_proposals=True), [u("Capital of France?")], model="loom.moa",
                         event_emitter=emitter)
    assert text.startswith("<details>\n<summary>MoA layer 1: 3 proposer answers</summary>\n")
    assert text.count("**Proposer ") == 3 and "> It is Paris." in text
    assert text.endswith("</details>\n\nParis.")
    assert emitter.statuses()[-1]["description"].startswith("MoA: 3 of 3 proposers answered · ")


async def test_recalled_memories_are_sources(loom, llm):
    user = a_user()
    added = httpx.post(f"{loom.url}/memories", json={"content": "My dog is called Rex."},
                       headers={"authorization": f"Bearer {PROXY_KEY}", "x-loom-user": user["id"]})
    assert added.status_code == 201, added.text
    llm.script({"text": "Your dog is Rex."}, {"text": '{"memories": []}'})
    emitter = Emitter()
    text, _ = await chat(make_pipe(loom), [u("What is my dog called?")], model="loom.memory", user=user,
                         event_emitter=emitter)
    assert text == "Your dog is Rex."
    [source] = emitter.of("source")
    assert source["document"] == ["My dog is called Rex."] and source["source"]["name"] == \
        "Memory: My dog is called Rex."
    assert 0 < source["distances"][0] <= 1


# -------------------------------------------------------------------------------------------------- errors


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
        async def consume():
            async for _ in stream:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    wait_for_log(loom, f"thread=openwebui-{chat_id}-agent", "outcome=cancelled")
    assert emitter.statuses()[-1] == {"description": "Stopped", "done": True}
    record = await asyncio.to_thread(llm.wait_request, lambda r: r["outcome"] is not None)
    assert record["outcome"] == "disconnected"


def test_status_lines_are_rate_limited_and_always_end_done():
    async def run(interval: float) -> list[dict]:
        emitter = Emitter()
        status = render.StatusLine(emitter, interval=interval)
        for line in ("one", "two", "three"):
            await status.show(line)
        await status.show("important", important=True)
        await status.show("held back")
        await status.done("finished")
        await status.done("again")  # only once
        return emitter.statuses()

    assert asyncio.run(run(0)) == [{"description": d, "done": False} for d in ("one", "two", "three", "important",
                                                                               "held back")] \
        + [{"description": "finished", "done": True}]
    async def held_line_goes_out_without_another_event() -> list[dict]:
        emitter = Emitter()
        status = render.StatusLine(emitter, interval=0.05)
        await status.show("one")
        await status.show("two")
        await status.show("three")  # replaces "two", which is never shown
        await status._timer  # the held line's turn comes (no new event needed)
        return emitter.statuses()

    assert asyncio.run(held_line_goes_out_without_another_event()) == [
        {"description": "one", "done": False}, {"description": "three", "done": False}]
    assert asyncio.run(run(3600)) == [{"description": "one", "done": False},
                                      {"description": "important", "done": False},
                                      {"description": "finished", "done": True}]


# -------------------------------------------------------------------------------------- the rendered file


def load_like_openwebui(source: str) -> types.ModuleType:
    """What OpenWebUI's plugin loader does with a function's text: exec it into a fresh module."""
    for text in REWRITTEN:
        source = source.replace(text, text.replace("from ", "from open_webui."))
    name = f"function_loom_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(source, module.__dict__)  # noqa: S102 — exactly what OpenWebUI does
    return module


async def test_the_served_file_is_one_working_pipe_with_the_servers_url(loom, llm):
    response = httpx.get(f"{loom.url}/openwebui/pipe.py")  # no key needed: the file holds none
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    source = response.text
    assert check_pipe(source) == []
    assert source.splitlines()[0] == '"""' and "title: loom" in source.split('"""')[1]
    assert f'LOOM_URL = "{loom.url}"' in source
    assert not any(text in source for text in REWRITTEN)

    module = load_like_openwebui(source)
    pipe = module.Pipe()
    pipe.valves = module.Pipe.Valves(api_key=PROXY_KEY)  # the URL is the served default
    assert "agent" in [m["id"] for m in await pipe.pipes()]
    llm.script({"tool_calls": [call("call_f", "calculator", {"expression": "3*3"})]}, {"text": "Nine."})
    user = {**a_user(), "valves": module.Pipe.UserValves()}
    text, _ = await chat(pipe, [u("3*3?")], user=user, event_emitter=Emitter())
    assert text == block("call_f", "calculator", "{&quot;expression&quot;: &quot;3*3&quot;}", "9") + "\nNine."


def test_loom_pipe_writes_the_file(tmp_path):
    output = tmp_path / "loom_pipe.py"
    done = subprocess.run([str(BIN / "loom"), "pipe", "--url", "http://loom.internal:9000/", "--output",
                           str(output)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    source = output.read_text()
    assert check_pipe(source) == [] and 'LOOM_URL = "http://loom.internal:9000"' in source
    compile(source, "loom_pipe.py", "exec")
    assert load_like_openwebui(source).Pipe().valves.loom_url == "http://loom.internal:9000"

    with pytest.raises(PipeRenderError):
        render_pipe('http://x" + evil + "')
    assert check_pipe('"""\ntitle: x\n"""\nfrom utils.misc import y\n') != []
