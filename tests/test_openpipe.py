"""OpenPipe: the run reporter and the thread → dataset endpoint against the stand-in (tests/openpipe_server.py).

Every graph's model calls reported with their interaction type and metadata; nothing when off or opted out;
a stand-in that hangs or refuses connections changes no run's events (the queue counters show the backlog);
overflow counted; datasets with conversations and preference pairs; the OpenWebUI Action with a fake emitter.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from letta_client import Letta

from loom.adapters.openpipe.client import (
    OpenPipeAuthError,
    OpenPipeClient,
    OpenPipeNotFound,
    OpenPipeRateLimited,
    OpenPipeUnreachable,
)
from loom.adapters.openwebui import action as action_module
from tests.conftest import LoomServer, new_id, user
from tests.letta_process import LettaServer
from tests.llm_server import free_port
from tests.openpipe_kit import OPK, fresh_openpipe_fixture, meta, openpipe_fixture, wait_for
from tests.test_agui_clients import tool_call

PROXY, ALICE, BOB = "key-proxy", "key-alice", "key-bob"
LETTA_KEY = "letta-test-key"
openpipe, _fresh_openpipe = openpipe_fixture, fresh_openpipe_fixture  # this module's stand-in


@pytest.fixture(scope="module")
def letta_srv():
    server = LettaServer(api_key=LETTA_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reporting(llm, openpipe, letta_srv, tmp_path_factory):
    agent_id = Letta(base_url=letta_srv.url, api_key=LETTA_KEY).agents.create(name="loom-openpipe").id
    server = LoomServer(
        tmp_path_factory.mktemp("loom-openpipe"), LOOM_LLM_BASE_URL=llm.url,
        LOOM_API_KEYS=f"{PROXY}=proxy {ALICE}=user:alice {BOB}=user:bob",
        LOOM_OPENPIPE_ENABLED="true", LOOM_OPENPIPE_API_KEY=OPK, LOOM_OPENPIPE_BASE_URL=openpipe.url,
        LOOM_OPENPIPE_METADATA='{"team": "qa"}',
        LOOM_LETTA_BASE_URL=letta_srv.url, LOOM_LETTA_API_KEY=LETTA_KEY, LOOM_LETTA_AGENT_ID=agent_id).start()
    yield server
    server.stop()


def as_alice(**extra) -> dict:
    return {"authorization": f"Bearer {ALICE}", **extra}


def reports_of(openpipe, thread_id: str, n: int) -> list[dict]:
    return wait_for(lambda: (r := [x for x in openpipe.reports if meta(x)["thread_id"] == thread_id])
                    and len(r) >= n and r, f"{n} reports of {thread_id}")


# ------------------------------------------------------------------------------------------------ client

def test_client_errors_are_specific(openpipe):
    async def go():
        async with OpenPipeClient("wrong", openpipe.url, timeout=2) as bad:
            with pytest.raises(OpenPipeAuthError):
                await bad.list_datasets()
        async with OpenPipeClient(OPK, openpipe.url, timeout=2) as client:
            with pytest.raises(OpenPipeNotFound):
                await client.add_entries("no-such-dataset", [])
            created = await client.create_dataset("c1")
            assert (await client.dataset_by_name("c1", create=False))["id"] == created["id"]
            result = await client.add_entries(created["id"], [
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                {"messages": []}, {"messages": [{"role": "user", "content": "q"}], "split": "VAL"}])
            assert result["entries_created"] == 1
            assert [e["entry_index"] for e in result["errors"]["data"]] == [1, 2]
        async with OpenPipeClient(OPK, f"http://127.0.0.1:{free_port()}/api/v1", timeout=2) as dead:
            with pytest.raises(OpenPipeUnreachable):
                await dead.report({})
        limited = httpx.MockTransport(lambda r: httpx.Response(429, json={"message": "slow"},
                                                               headers={"retry-after": "3"}))
        async with OpenPipeClient(OPK, "http://openpipe.invalid/api/v1", transport=limited) as client:
            with pytest.raises(OpenPipeRateLimited) as caught:
                await client.report({})
            assert caught.value.retry_after == 3.0
    asyncio.run(go())


# ------------------------------------------------------------------------------------------------ reporter

def test_agent_chat_and_function_calling_are_reported(reporting, llm, openpipe):
    thread = new_id()
    llm.script({"tool_calls": [tool_call("calculator", {"expression": "6*7"})], "usage": {
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}, {"text": "It is 42."})
    events = reporting.run("agent", [user("What is 6*7?")], thread, headers=as_alice())
    assert events[-1]["type"] == "RUN_FINISHED"
    first, second = reports_of(openpipe, thread, 2)
    assert first["statusCode"] == 200 and first["requestedAt"] <= first["receivedAt"]
    assert first["reqPayload"]["model"] == "scripted"
    assert first["reqPayload"]["messages"][-1] == {"role": "user", "content": "What is 6*7?"}
    assert "calculator" in {t["function"]["name"] for t in first["reqPayload"]["tools"]}
    (call,) = first["respPayload"]["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "calculator" and first["respPayload"]["object"] == "chat.completion"
    assert first["respPayload"]["choices"][0]["finish_reason"] == "tool_calls"
    assert meta(first).items() >= {"interaction_type": "function_calling", "tools_used": "calculator", "graph": "agent",
                                   "node": "call_model", "user_id": "alice", "team": "qa", "source": "loom"}.items()
    assert float(meta(first)["inference_ms"]) >= 0
    assert meta(second)["interaction_type"] == "function_calling"  # it answers a tool result
    assert second["reqPayload"]["messages"][-1]["role"] == "tool"
    assert second["respPayload"]["choices"][0]["message"]["content"] == "It is 42."

    thread = new_id()
    llm.script({"text": "Hello there."})
    reporting.run("agent", [user("hi")], thread, headers=as_alice())
    (plain,) = reports_of(openpipe, thread, 1)
    assert meta(plain)["interaction_type"] == "chat_message" and "tools_used" not in meta(plain)


def test_moa_proposals_and_aggregation_are_reported(reporting, llm, openpipe):
    thread = new_id()
    for model in ("p1", "p2"):
        llm.set_model(model, text=f"{model} says hi")
    llm.set_model("agg", text="together")
    props = {"context": {"proposers": [{"model": "p1"}, {"model": "p2"}], "aggregator_model": "agg"}}
    reporting.run("moa", [user("q")], thread, headers=as_alice(), forwardedProps=props)
    reports = reports_of(openpipe, thread, 3)
    proposals = sorted((r for r in reports if meta(r)["interaction_type"] == "moa_proposal"),
                       key=lambda r: meta(r)["moa_index"])
    (aggregation,) = [r for r in reports if meta(r)["interaction_type"] == "moa_aggregation"]
    assert [r["reqPayload"]["model"] for r in proposals] == ["p1", "p2"]
    assert [(meta(r)["moa_layer"], meta(r)["layer"], meta(r)["moa_index"]) for r in proposals] == [
        ("1", "1", "0"), ("1", "1", "1")] or [meta(r)["moa_index"] for r in proposals] == ["0", "1"]
    assert all(meta(r)["graph"] == "moa" and meta(r)["moa_role"] == "proposer" for r in proposals)
    assert aggregation["reqPayload"]["model"] == "agg"
    assert aggregation["respPayload"]["choices"][0]["message"]["content"] == "together"


def test_memory_extraction_is_a_memory_operation(reporting, llm, openpipe):
    thread = new_id()
    llm.script({"text": "Nice!"}, {"text": '{"memories": ["I live in Lyon."]}'})
    reporting.run("memory", [user("I live in Lyon.")], thread, headers=as_alice())
    reports = reports_of(openpipe, thread, 2)
    kinds = {meta(r)["node"]: meta(r)["interaction_type"] for r in reports}
    assert kinds["autosave"] == "memory_operation"
    assert "chat_message" in kinds.values() or "function_calling" in kinds.values()


def test_letta_turns_are_reported(reporting, letta_srv, openpipe):
    thread = new_id()
    events = reporting.run("letta", [user("hello letta")], thread, headers=as_alice())
    assert events[-1]["type"] == "RUN_FINISHED", events[-1]
    (report,) = reports_of(openpipe, thread, 1)
    assert meta(report)["graph"] == "letta" and meta(report)["interaction_type"] == "chat_message"
    assert report["statusCode"] == 200 and report["respPayload"]["choices"][0]["message"]["role"] == "assistant"


def test_system_tasks_and_opt_out(reporting, llm, openpipe):
    thread = new_id()
    llm.script({"text": '{"title": "Greeting"}'})
    reporting.run("agent", [user("make a title")], thread, headers={"authorization": f"Bearer {PROXY}"},
                  forwardedProps={"user": {"id": "carol"}, "task": "title_generation"})
    (report,) = reports_of(openpipe, thread, 1)
    assert meta(report)["interaction_type"] == "system_task" and meta(report)["system_task"] == "title_generation"
    assert meta(report)["user_id"] == "carol"

    opted = new_id()
    llm.script({"text": "private"})
    reporting.run("agent", [user("secret")], opted, headers={"authorization": f"Bearer {PROXY}"},
                  forwardedProps={"user": {"id": "carol"}, "openpipe": {"optOut": True}})
    marker = new_id()
    llm.script({"text": "later"})
    reporting.run("agent", [user("later")], marker, headers=as_alice())
    reports_of(openpipe, marker, 1)  # sent after the opted-out run would have been
    assert not [r for r in openpipe.reports if meta(r)["thread_id"] == opted]


def test_a_task_is_one_model_call_reported_as_a_system_task(reporting, llm, openpipe):
    def task(name: str, body: dict, who: str | None = "dave") -> httpx.Response:
        headers = {"authorization": f"Bearer {PROXY}", **({"x-loom-user": who} if who else {})}
        return httpx.post(f"{reporting.url}/tasks/{name}", json=body, headers=headers, timeout=30)

    llm.script({"text": '{"title": "Tides"}'})
    answered = task("title_generation", {"messages": [{"role": "user", "content": "Title for: tides?"}]})
    assert answered.status_code == 200 and answered.json() == {"content": '{"title": "Tides"}'}
    [request] = llm.requests()
    assert request["body"].get("stream") is not True and request["body"]["messages"][-1]["content"] == \
        "Title for: tides?"
    (report,) = wait_for(lambda: [r for r in openpipe.reports if meta(r).get("user_id") == "dave"], "the report")
    assert meta(report)["interaction_type"] == "system_task" and meta(report)["system_task"] == "title_generation"

    llm.script({"status": 500, "error_message": "down"}, {"status": 500, "error_message": "down"})
    failed = task("tags_generation", {"messages": [{"role": "user", "content": "Tags?"}]})
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "model_error"
    for name, body, who, status, code in (
            ("Title!", {"messages": [{"role": "user", "content": "x"}]}, "dave", 400, "invalid_task"),
            ("title_generation", {"messages": [{"role": "tool", "content": "x"}]}, "dave", 400, "invalid_messages"),
            ("title_generation", {"messages": []}, "dave", 422, "invalid_input"),
            ("title_generation", {"messages": [{"role": "user", "content": "x"}]}, None, 422, "missing_user")):
        refused = task(name, body, who)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code), refused.text


def test_status_counts_what_was_sent(reporting, llm, openpipe):
    llm.script({"text": "x"})
    reporting.run("agent", [user("x")], headers=as_alice())
    status = wait_for(lambda: (s := httpx.get(f"{reporting.url}/openpipe/status", headers=as_alice()).json())
                      ["sent"] >= 1 and s, "a sent report")
    assert status["enabled"] and status["dropped"] == 0 and status["capacity"] == 1000


# ------------------------------------------------------------------------------------------------ datasets

def test_thread_to_dataset_with_preference_pairs(reporting, llm, openpipe):
    thread = new_id()
    s0, u1 = {"id": new_id(), "role": "system", "content": "Be funny."}, user("Tell me a joke.")
    llm.script({"text": "Joke one."})
    first = reporting.run("agent", [s0, u1], thread, headers=as_alice())
    a1 = {"id": [e for e in first if e["type"] == "TEXT_MESSAGE_START"][0]["messageId"], "role": "assistant",
          "content": "Joke one."}
    llm.script({"text": "Fine."})
    u2 = user("Another, with a picture.")
    u2["content"] = [{"type": "text", "text": "Another, with a picture."},
                     {"type": "image", "source": {"type": "url", "value": "https://example.invalid/cat.png"}}]
    reporting.run("agent", [s0, u1, a1, u2], thread, headers=as_alice())
    llm.script({"text": "Joke two, better."})  # regenerate the second answer: the thread forks at u2
    reporting.run("agent", [s0, u1, a1, u2], thread, headers=as_alice())

    response = httpx.post(f"{reporting.url}/threads/{thread}/dataset", headers=as_alice(), timeout=10,
                          json={"dataset": "jokes", "split": "TEST", "metadata": {"rating": "good"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["entries"] == body["entries_created"] == 2 and body["preference_pairs"] == 1 and not body["errors"]
    conversation, pair = openpipe.entries("jokes")
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conversation["messages"][-1]["content"] == "Joke two, better."
    parts = conversation["messages"][2]["content"]
    assert isinstance(parts, list) and any(p.get("type") == "image_url" for p in parts)
    assert conversation["split"] == "TEST" and conversation["metadata"]["rating"] == "good"
    assert conversation["metadata"]["thread_id"] == thread and conversation["metadata"]["graph"] == "agent"
    assert pair["messages"][-1]["content"] == "Joke two, better."
    assert pair["rejected_message"] == {"role": "assistant", "content": "Fine."}

    again = httpx.post(f"{reporting.url}/threads/{thread}/dataset", headers=as_alice(), timeout=10,
                       json={"dataset": "jokes", "preference_pairs": False, "include_system": True})
    assert again.json()["entries_created"] == 1 and len(openpipe.entries("jokes")) == 3
    assert again.json()["dataset_id"] == body["dataset_id"]  # found by name, not created twice
    assert openpipe.entries("jokes")[2]["messages"][0]["role"] == "system"

    # Only the caller's own threads.
    for headers in ({"authorization": f"Bearer {BOB}"},
                    {"authorization": f"Bearer {PROXY}", "x-loom-user": "mallory"}):
        denied = httpx.post(f"{reporting.url}/threads/{thread}/dataset", headers=headers, json={"dataset": "x"})
        assert denied.status_code == 404 and denied.json()["error"]["code"] == "thread_not_found"
    assert httpx.post(f"{reporting.url}/threads/{thread}/dataset", json={"dataset": "x"}).status_code == 401


def test_tool_calls_are_kept_in_dataset_entries(reporting, llm, openpipe):
    thread = new_id()
    llm.script({"tool_calls": [tool_call("calculator", {"expression": "2+2"})]}, {"text": "4."})
    reporting.run("agent", [user("2+2?")], thread, headers=as_alice())
    response = httpx.post(f"{reporting.url}/threads/{thread}/dataset", headers=as_alice(), json={"dataset": "tools"})
    assert response.status_code == 200, response.text
    (entry,) = openpipe.entries("tools")
    assert [m["role"] for m in entry["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert entry["messages"][1]["tool_calls"][0]["function"]["name"] == "calculator"


# ------------------------------------------------------------------------------------------------ Action

def test_openwebui_action_sends_the_chat_and_notifies(reporting, llm, openpipe):
    chat = new_id()
    llm.script({"text": "An answer."})
    reporting.run("agent", [user("a question")], f"openwebui-{chat}-agent",
                  headers={"authorization": f"Bearer {PROXY}"}, forwardedProps={"user": {"id": "dave"}})
    served = httpx.get(f"{reporting.url}/openwebui/action.py").text
    assert f"LOOM_URL = {reporting.url!r}" in served and "def render_action" not in served
    namespace: dict = {}
    exec(compile(served, "loom_openpipe_action.py", "exec"), namespace)  # as OpenWebUI loads it
    for make in (namespace["Action"], action_module.Action):
        emitted: list[dict] = []

        async def emit(event, emitted=emitted):
            emitted.append(event)

        act = make()
        act.valves.loom_url, act.valves.api_key, act.valves.dataset = reporting.url, PROXY, "owui"
        asyncio.run(act.action({"model": "loom.agent", "chat_id": chat, "id": "m1", "messages": []},
                               __user__={"id": "dave", "name": "Dave"}, __event_emitter__=emit))
        notes = [e["data"] for e in emitted if e["type"] == "notification"]
        assert notes and notes[-1]["type"] == "success", emitted
        assert "owui" in notes[-1]["content"]
    assert len(openpipe.entries("owui")) == 2
    assert openpipe.entries("owui")[0]["metadata"]["chat_id"] == chat

    emitted = []

    async def emit(event):
        emitted.append(event)

    act = action_module.Action()
    act.valves.loom_url, act.valves.api_key = reporting.url, PROXY
    asyncio.run(act.action({"model": "loom.agent", "chat_id": "not-a-chat"}, __user__={"id": "dave"},
                           __event_emitter__=emit))
    assert [e["data"]["type"] for e in emitted if e["type"] == "notification"] == ["error"]
    act.valves.loom_url = f"http://127.0.0.1:{free_port()}"
    emitted.clear()
    asyncio.run(act.action({"model": "loom.agent", "chat_id": chat}, __user__={"id": "dave"},
                           __event_emitter__=emit))
    assert "could not be reached" in [e for e in emitted if e["type"] == "notification"][0]["data"]["content"]


# ------------------------------------------------------------------------------------------------ the pipe

def test_the_pipe_forwards_opt_out_and_system_tasks(reporting, llm, openpipe):
    from loom.adapters.openwebui.pipe import Pipe

    async def drain(result):
        return result if isinstance(result, str) else "".join([str(i) async for i in result])

    async def emit(event):
        pass

    pipe = Pipe()
    pipe.valves = Pipe.Valves(loom_url=reporting.url, api_key=PROXY)
    who = f"owui-{new_id()[:8]}"
    quiet = {"id": who, "name": "Ada", "valves": Pipe.UserValves(openpipe_opt_out=True)}
    chat_id = new_id()
    llm.script({"text": "not reported"})
    text = asyncio.run(drain(asyncio.run(pipe.pipe({"model": "loom.agent", "messages": [{"role": "user",
                                                    "content": "hi"}], "stream": True}, __user__=quiet,
                                                   __chat_id__=chat_id, __event_emitter__=emit))))
    assert "not reported" in text

    # With local_tasks, tasks are answered at once; with run_tasks they run through loom, as system tasks.
    task_body = {"model": "loom.agent", "messages": [{"role": "user", "content": "Title for: hello"}]}
    loud = {"id": who, "name": "Ada", "valves": Pipe.UserValves()}
    pipe.valves = Pipe.Valves(loom_url=reporting.url, api_key=PROXY, local_tasks=True)
    answer = asyncio.run(pipe.pipe({"model": "loom.agent"}, __user__=loud, __task__="title_generation",
                                   __task_body__=task_body))
    assert isinstance(answer, str)
    pipe.valves = Pipe.Valves(loom_url=reporting.url, api_key=PROXY, run_tasks=True)
    llm.script({"text": '{"title": "Hello"}'})
    text = asyncio.run(drain(asyncio.run(pipe.pipe({"model": "loom.agent"}, __user__=loud,
                                                   __task__="title_generation", __task_body__=task_body,
                                                   __event_emitter__=emit))))
    assert '"Hello"' in text
    (task,) = wait_for(lambda: [r for r in openpipe.reports if meta(r).get("user_id") == who], "the task report")
    assert meta(task)["interaction_type"] == "system_task" and meta(task)["system_task"] == "title_generation"
    assert not [r for r in openpipe.reports if meta(r)["thread_id"] == f"openwebui-{chat_id}-agent"]


def test_a_failed_model_call_is_reported_with_its_status(reporting, llm, openpipe):
    thread = new_id()
    llm.script({"status": 400, "error_message": "bad request"})
    events = reporting.run("agent", [user("fail")], thread, headers=as_alice())
    assert events[-1]["type"] == "RUN_ERROR"
    (report,) = reports_of(openpipe, thread, 1)
    assert report["statusCode"] == 400 and "bad request" in report["errorMessage"]
    assert report["respPayload"]["error"]["message"] == report["errorMessage"]
