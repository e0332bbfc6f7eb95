"""End to end: loom's generated pipe inside a real OpenWebUI 0.12 (see tests/openwebui_rig.py).

The rig installs OpenWebUI into its own virtualenv on first use (a few minutes, once per machine), starts it
offline on loopback, signs up the admin and installs the pipe from loom's `GET /openwebui/pipe.py` through the
functions API. Chats go through OpenWebUI's `/api/chat/completions`; the scripted LLM behind loom records what
reached the model; a socket.io client logged in as the same user sees the status events.
"""

from __future__ import annotations

import asyncio
import copy
import html
import json

import httpx
import pytest
import socketio
from letta_client import Letta

from tests.conftest import LoomServer
from tests.letta_process import LettaServer
from tests.openpipe_server import OpenPipeServer
from tests.openwebui_rig import OpenWebUI, install_loom_pipe

PROXY_KEY = "e2e-proxy-key"
OPENPIPE_KEY = "e2e-openpipe-key"
LETTA_KEY = "e2e-letta-key"
# The first test pays for the venv (once per machine) and OpenWebUI's start; these bound hangs, not speed.
pytestmark = pytest.mark.timeout(1200)

WEATHER_TOOL = '''"""
title: Weather
description: The weather in a city, in the unit the user chose.
"""

from pydantic import BaseModel, Field


class Tools:
    class UserValves(BaseModel):
        unit: str = Field("C", description="C or F")

    async def get_weather(self, city: str, __user__: dict = {}) -> str:
        """
        The weather in a city.
        :param city: The city.
        """
        valves = __user__.get("valves")
        unit = valves.get("unit", "C") if isinstance(valves, dict) else getattr(valves, "unit", "C")
        return f"{city}: 21°C" if unit == "C" else f"{city}: 70°F"
'''


@pytest.fixture(scope="module")
def letta_srv():
    server = LettaServer(api_key=LETTA_KEY).start()  # the stand-in Letta server of tests/test_letta.py
    yield server
    server.stop()


@pytest.fixture(scope="module")
def openpipe():
    server = OpenPipeServer(OPENPIPE_KEY).start()  # the OpenPipe stand-in of tests/test_openpipe.py
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loom(llm, letta_srv, openpipe, tmp_path_factory):
    agent_id = Letta(base_url=letta_srv.url, api_key=LETTA_KEY).agents.create(name="loom-e2e").id
    server = LoomServer(tmp_path_factory.mktemp("e2e-loom"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_API_KEYS=f"{PROXY_KEY}=proxy", LOOM_MEMORY_EMBEDDINGS_URL=llm.url,
                        LOOM_MEMORY_EMBEDDINGS_MODEL="hashed-bow", LOOM_LETTA_BASE_URL=letta_srv.url,
                        LOOM_LETTA_API_KEY=LETTA_KEY, LOOM_LETTA_AGENT_ID=agent_id,
                        LOOM_OPENPIPE_ENABLED="true", LOOM_OPENPIPE_API_KEY=OPENPIPE_KEY,
                        LOOM_OPENPIPE_BASE_URL=openpipe.url).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def openwebui(loom, tmp_path_factory):
    server = OpenWebUI(tmp_path_factory.mktemp("openwebui"))
    try:
        server.start()
        print(f"\nOpenWebUI up in {server.startup_seconds:.0f} s at {server.url}")
        install_loom_pipe(server, loom.url, PROXY_KEY)
        action = httpx.get(f"{loom.url}/openwebui/action.py", timeout=30).text  # as an admin downloads it
        server.install_function("loom_openpipe", action, {"loom_url": loom.url, "api_key": PROXY_KEY,
                                                          "dataset": "openwebui-e2e"})
        server.create_tool("weather", WEATHER_TOOL, "Weather")
        yield server
    finally:
        server.stop()


def call(call_id: str, name: str, args: dict) -> dict:
    return {"id": call_id, "name": name, "arguments": args}


def block(call_id: str, name: str, args: dict, result: str) -> str:
    arguments = html.escape(json.dumps(args), quote=True)
    return (f'<details type="tool_calls" done="true" id="{call_id}" name="{name}" arguments="{arguments}">\n'
            f"<summary>Tool Executed</summary>\n{html.escape(result)}\n</details>\n")


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def test_every_graph_is_an_openwebui_model(openwebui):
    assert {"loom.agent", "loom.moa", "loom.memory", "loom.letta"} <= set(openwebui.model_ids())


def test_agent_text_streams(openwebui, llm):
    llm.script({"text": "Hello there, how can I help you today?"})
    text, chunks = openwebui.chat("loom.agent", [u("hi")])
    assert text == "Hello there, how can I help you today?"
    assert len([c for c in chunks if c.get("choices")]) > 2  # streamed in pieces, not one block
    [request] = llm.requests()
    assert request["body"]["messages"][-1]["content"] == "hi"


def test_backend_tool_call_is_a_tool_call_block(openwebui, llm):
    llm.script({"tool_calls": [call("call_calc", "calculator", {"expression": "6*7"})]}, {"text": "It is 42."})
    text, _ = openwebui.chat("loom.agent", [u("What is 6*7?")])
    assert text == block("call_calc", "calculator", {"expression": "6*7"}, "42") + "\nIt is 42."


def test_moa_answers(openwebui, llm):
    llm.script({"text": "Paris."}, {"text": "It is Paris."}, {"text": "Paris, France."}, {"text": "Paris."})
    text, _ = openwebui.chat("loom.moa", [u("Capital of France?")])
    assert text == "Paris."
    assert len(llm.requests()) == 4  # three proposers and the aggregator


def test_memory_answers(openwebui, llm):
    llm.script({"text": "Nice to meet you, Ada."}, {"text": '{"memories": []}'})
    text, _ = openwebui.chat("loom.memory", [u("I am Ada.")])
    assert text == "Nice to meet you, Ada."


def test_letta_answers_with_its_tool_call(openwebui, letta_srv):
    letta_srv.script({"steps": [{"tool_call": {"name": "archival_memory_search", "arguments": {"query": "dog"},
                                               "id": "call_l"}},
                                {"tool_return": {"return": "Rex"}},
                                {"assistant": "Your dog is Rex."}]})
    text, _ = openwebui.chat("loom.letta", [u("What is my dog called?")])
    assert text.startswith(block("call_l", "archival_memory_search", {"query": "dog"}, "Rex"))
    assert text.endswith("\nYour dog is Rex.")
    [sent] = [r for r in letta_srv.requests() if r["path"].endswith("/messages") and r["method"] == "POST"]
    assert "What is my dog called?" in json.dumps(sent["body"])


@pytest.mark.parametrize("unit, shown", [("C", "Lyon: 21°C"), ("F", "Lyon: 70°F")])
def test_workspace_tool_round_trip_with_the_users_valve(openwebui, llm, unit, shown):
    openwebui.set_tool_user_valves("weather", {"unit": unit})
    llm.script({"tool_calls": [call("call_w", "get_weather", {"city": "Lyon"})]}, {"text": f"It is {shown[6:]}."})
    text, _ = openwebui.chat("loom.agent", [u("Weather in Lyon?")], tool_ids=["weather"])

    requests = llm.requests()
    assert len(requests) == 2, [r["body"]["messages"] for r in requests]
    assert "get_weather" in [t["function"]["name"] for t in requests[0]["body"].get("tools") or []]
    assert requests[1]["body"]["messages"][-1] == {"role": "tool", "tool_call_id": "call_w", "content": shown}
    assert text == block("call_w", "get_weather", {"city": "Lyon"}, shown) + f"\nIt is {shown[6:]}."


async def test_status_events_reach_the_users_socket_and_end_done(openwebui, llm):
    events: list[dict] = []
    client = socketio.AsyncClient(reconnection=False)

    @client.on("events")
    async def on_event(data):
        events.append(data)

    await client.connect(openwebui.url, socketio_path="/ws/socket.io", transports=["websocket"],
                         auth={"token": openwebui.token}, wait_timeout=30)
    try:
        joined = await client.call("user-join", {"auth": {"token": openwebui.token}}, timeout=30)
        assert joined["id"] == openwebui.user["id"]  # this sid is in the user's room now
        llm.script({"tool_calls": [call("call_calc", "calculator", {"expression": "2+3"})]}, {"text": "Five."})
        text, _ = await asyncio.to_thread(openwebui.chat, "loom.agent", [u("2+3?")])
        assert text.endswith("\nFive.")
        for _ in range(100):  # the last status may arrive just after the HTTP stream ended
            statuses = [e["data"]["data"] for e in events if (e.get("data") or {}).get("type") == "status"]
            if statuses and statuses[-1].get("done") is True:
                break
            await asyncio.sleep(0.1)
    finally:
        await client.disconnect()
    assert statuses, events
    assert statuses[-1]["done"] is True and not any(s.get("done") for s in statuses[:-1])
    assert statuses[-1]["description"].startswith("1 tool call · ")


async def test_a_browser_style_chat_is_saved_with_status_history_and_tool_blocks(openwebui, llm):
    """UI mode, as the browser sends it: OpenWebUI adds its built-in tools (the pipe leaves them out), streams
    over socket.io, and saves the chat with the status history and the tool-call blocks."""
    openwebui.set_tool_user_valves("weather", {"unit": "F"})
    llm.script({"tool_calls": [call("call_c", "calculator", {"expression": "6*7"}),
                               call("call_w", "get_weather", {"city": "Lyon"})]},
               {"text": "6*7 is 42, and Lyon is at 70°F."})
    message, events = await openwebui.ui_chat("loom.agent", "6*7, and the weather in Lyon?", tool_ids=["weather"])

    assert not message.get("error"), message
    content = message["content"]
    assert content.startswith(block("call_c", "calculator", {"expression": "6*7"}, "42"))
    assert "\n" + block("call_w", "get_weather", {"city": "Lyon"}, "Lyon: 70°F") in content
    assert content.endswith("</details>\n\n6*7 is 42, and Lyon is at 70°F.")
    offered = [t["function"]["name"] for t in llm.requests()[0]["body"]["tools"]]
    assert "get_weather" in offered and "calculator" in offered and "search_web" not in offered
    history = message["statusHistory"]
    assert history[-1]["done"] is True and history[-1]["description"].startswith("2 tool calls · ")
    assert any((e.get("data") or {}).get("type") == "status" for e in events)


async def test_the_openpipe_action_sends_the_chat_to_a_dataset(openwebui, llm, openpipe):
    """The Action button, as the browser presses it under an answer: the chat's thread reaches the dataset."""
    llm.script({"text": "Paris is the capital of France."})
    message, _ = await openwebui.ui_chat("loom.agent", "What is the capital of France?")
    assert not message.get("error"), message
    events: list[dict] = []
    client = socketio.AsyncClient(reconnection=False)  # the browser's session: where the Action's toast goes

    @client.on("events")
    async def on_event(payload):
        events.append(payload.get("data") or {})

    await client.connect(openwebui.url, socketio_path="/ws/socket.io", transports=["websocket"],
                         auth={"token": openwebui.token}, wait_timeout=30)
    try:
        await client.call("user-join", {"auth": {"token": openwebui.token}}, timeout=30)
        body = {"model": "loom.agent", "chat_id": message["chat_id"], "id": message["id"],
                "session_id": client.get_sid("/"),
                "messages": [{"role": "user", "content": "What is the capital of France?"},
                             {"role": "assistant", "content": message["content"]}]}
        await asyncio.to_thread(openwebui.call, "POST", "/api/chat/actions/loom_openpipe", body)
        for _ in range(50):  # the notification travels over the socket after the call returns
            if any(e.get("type") == "notification" for e in events):
                break
            await asyncio.sleep(0.1)
    finally:
        await client.disconnect()
    [entry] = openpipe.entries("openwebui-e2e")
    assert entry["split"] == "TRAIN"
    assert [(m["role"], m["content"]) for m in entry["messages"]] == [
        ("user", "What is the capital of France?"), ("assistant", "Paris is the capital of France.")]
    [toast] = [e["data"] for e in events if e.get("type") == "notification"]
    assert toast["type"] == "success" and "openwebui-e2e" in toast["content"]


def second_account(openwebui: OpenWebUI) -> OpenWebUI:
    """Another OpenWebUI account on the same server, signed in with its own token. An admin role, because
    OpenWebUI shows a plain user only the models an admin has shared (not what this test is about)."""
    account = {"name": "Bo Second", "email": "bo@example.org", "password": "loom-e2e-password-2"}
    openwebui.call("POST", "/api/v1/auths/add", {**account, "role": "admin"})
    signed_in = openwebui.call("POST", "/api/v1/auths/signin",
                               {"email": account["email"], "password": account["password"]}, auth=False)
    other = copy.copy(openwebui)
    other.user, other.token = signed_in, signed_in["token"]
    return other


async def test_two_openwebui_users_each_keep_their_own_threads(openwebui, loom, llm, openpipe):
    """One pipe, one proxy key, two people: each chat reaches the model alone, and each chat's loom thread
    belongs to the OpenWebUI user who wrote it (the other is refused as if the thread did not exist)."""
    bo = second_account(openwebui)
    llm.script({"text": "Hello Ada."}, {"text": "Hello Bo."})
    ada_message, _ = await openwebui.ui_chat("loom.agent", "I am Ada")
    bo_message, _ = await bo.ui_chat("loom.agent", "I am Bo")
    assert (ada_message["content"], bo_message["content"]) == ("Hello Ada.", "Hello Bo.")
    seen = [[m["content"] for m in r["body"]["messages"] if m["role"] == "user"] for r in llm.requests()]
    assert seen == [["I am Ada"], ["I am Bo"]]

    def export(message: dict, account: OpenWebUI) -> httpx.Response:
        thread = f"openwebui-{message['chat_id']}-agent"  # the pipe's thread for a UI chat of the agent graph
        return httpx.post(f"{loom.url}/threads/{thread}/dataset", json={"dataset": "two-users"}, timeout=30,
                          headers={"authorization": f"Bearer {PROXY_KEY}", "x-loom-user": account.user["id"]})

    for message, owner, other in ((ada_message, openwebui, bo), (bo_message, bo, openwebui)):
        refused = export(message, other)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "thread_not_found"
        assert export(message, owner).status_code == 200
    assert [[m["content"] for m in e["messages"]] for e in openpipe.entries("two-users")] == [
        ["I am Ada", "Hello Ada."], ["I am Bo", "Hello Bo."]]
