"""The `letta` graph against the real Letta server (tests/letta_rig.py: letta 0.16.8 on PostgreSQL + pgvector and
Redis), with the scripted LLM server as the agent's model: what the agent does is scripted there, what Letta makes
of it is Letta's own. The official @ag-ui/client and ag-ui-validate check the streams."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.agui_js import run_agui_client
from tests.conftest import LoomServer, new_id, text_of, user
from tests.letta_real import DEAD_LLM, KEY, loom_for
from tests.letta_wire import (
    assert_call_frames,
    assert_cancelled_stream,
    assert_conflict_in_stream,
    assert_rest_facts,
    assert_turn_end,
    new_conversation,
    raw_turn,
    user_messages_after_resend,
)
from tests.test_agui_clients import WEATHER, assert_clean
from tests.test_letta import assert_nothing_overlaps, assert_run_error, of_type


@pytest.fixture(scope="module")
def agent_id(real_letta) -> str:
    return real_letta.new_agent(f"loom-graph-{new_id()[:8]}", approval_tools=("memory_insert",))


@pytest.fixture(scope="module")
def loom(real_letta, agent_id, tmp_path_factory):
    server = loom_for(tmp_path_factory.mktemp("loom-real-letta"), real_letta.url, agent_id)
    yield server
    server.stop()


def conversations_of(real_letta, agent_id: str) -> list[str]:
    return [c.id for c in real_letta.client().conversations.list(agent_id=agent_id)]


def test_reasoning_server_tool_text_and_usage(loom, real_letta):
    real_letta.llm.script(
        {"reasoning": "Let me look.", "tool_calls": [{"id": "call_s", "name": "conversation_search",
                                                      "arguments": {"query": "tomatoes"}}]},
        {"text": "Nothing about tomatoes yet."})
    result = run_agui_client(f"{loom.url}/agents/letta", [{"op": "user", "content": "tomatoes?"}])
    assert_clean(result)
    [run] = result["runs"]
    events = run["wireEvents"]
    assert_nothing_overlaps(events)
    assert "".join(e["delta"] for e in of_type(events, "REASONING_MESSAGE_CONTENT")) == "Let me look."
    [start] = of_type(events, "TOOL_CALL_START")
    assert (start["toolCallId"], start["toolCallName"]) == ("call_s", "conversation_search")
    args = "".join(e["delta"] for e in of_type(events, "TOOL_CALL_ARGS"))
    assert json.loads(args) == {"query": "tomatoes"}  # fragments repeat the call id: still one call
    [tool_result] = of_type(events, "TOOL_CALL_RESULT")
    assert tool_result["toolCallId"] == "call_s" and tool_result["content"]  # Letta ran its own tool
    assert text_of(events) == "Nothing about tomatoes yet."
    [usage] = events[-1]["usage"]  # a usage frame without id or date still reaches RUN_FINISHED
    assert usage["provider"] == "letta" and usage["inputTokens"] > 0 and usage["outputTokens"] > 0
    assert [m["role"] for m in result["messages"]] == ["user", "reasoning", "assistant", "tool", "assistant"]


def test_one_conversation_per_thread_and_a_deleted_one_is_replaced(loom, real_letta, agent_id):
    thread, first = new_id(), user("a1")
    answer = loom.run("letta", [first], thread)
    assert text_of(answer) == "echo: a1"
    message_id = of_type(answer, "TEXT_MESSAGE_START")[0]["messageId"]
    history = [first, {"id": message_id, "role": "assistant", "content": "echo: a1"}]
    before = set(conversations_of(real_letta, agent_id))
    assert text_of(loom.run("letta", [*history, user("a2")], thread)) == "echo: a2"
    [conversation] = [c for c in before if real_letta.user_texts(c) == ["a1", "a2"]]
    listed = real_letta.client().conversations.messages.list(conversation, order="asc", limit=100).items
    assert listed[0].message_type == "system_message"  # the real server lists the system prompt too
    deleted = real_letta.client().conversations.delete(conversation)
    assert deleted is None  # body `null`
    assert text_of(loom.run("letta", [*history, user("a3")], thread)) == "echo: a3"
    [replacement] = set(conversations_of(real_letta, agent_id)) - before
    assert real_letta.user_texts(replacement) == ["a3"]


@pytest.mark.parametrize("decision, payload, approve", [
    ("approve", None, True), ("reject", {"approved": False, "reason": "not today"}, False)])
def test_approval_is_an_interrupt_and_resume_sends_the_decision(loom, real_letta, decision, payload, approve):
    real_letta.llm.script(
        {"tool_calls": [{"id": "call_m", "name": "memory_insert",
                         "arguments": {"label": "human", "new_str": "Likes tea."}}]},
        {"text": "Done."})
    step = {"op": "resume", "decision": decision, **({"payload": payload} if payload else {})}
    result = run_agui_client(f"{loom.url}/agents/letta", [{"op": "user", "content": "remember tea"}, step])
    assert_clean(result)
    interrupted, resumed = result["runs"]
    assert interrupted["outcome"] == "interrupt"
    [pending] = interrupted["pendingInterrupts"]
    assert (pending["id"], pending["toolCallId"]) == ("call_m", "call_m") and "memory_insert" in pending["message"]
    tool_events = [e for e in resumed["wireEvents"] if e["type"].startswith("TOOL_CALL")]
    assert [(e["type"], e["toolCallId"]) for e in tool_events] == [("TOOL_CALL_RESULT", "call_m")]
    outcome = tool_events[0]["content"]  # Letta's tool return, or (Letta streams none for a denial) loom's
    assert ("declined" in outcome and "not today" in outcome) is not approve, outcome
    assert result["messages"][-1]["content"] == "Done."
    # What the model saw next: the tool's real result (Letta ran it, or told the model it was denied).
    [last] = [r for r in real_letta.llm.requests() if r["body"]["messages"][-1]["role"] == "tool"]
    assert last["body"]["messages"][-1]["tool_call_id"] == "call_m"


def test_frontend_tools_are_letta_client_tools(loom, real_letta):
    real_letta.llm.script(
        {"tool_calls": [{"id": "call_w", "name": "show_weather", "arguments": {"city": "Oslo"}}]},
        {"text": "Shown."})
    result = run_agui_client(f"{loom.url}/agents/letta", [
        {"op": "user", "content": "weather in Oslo"},
        {"op": "tool_results", "results": {"show_weather": "rendered: 4 degrees"}},
    ], tools=[WEATHER])
    assert_clean(result)
    first, second = result["runs"]
    assert first["outcome"] == "success" and first["pendingToolCallIds"] == ["call_w"]
    offered = real_letta.llm.requests()[0]["body"]["tools"]
    assert "show_weather" in [t["function"]["name"] for t in offered]  # sent to Letta as a client tool
    answered = real_letta.llm.requests()[-1]["body"]["messages"][-1]
    assert answered["role"] == "tool" and "rendered: 4 degrees" in json.dumps(answered)
    assert result["messages"][-1]["content"] == "Shown."


def test_new_message_while_a_client_tool_is_pending(loom, real_letta):
    """Letta answers HTTP 200 and a `CONFLICT` error inside the stream (not a 409): still LETTA_PENDING_APPROVAL."""
    real_letta.llm.script({"tool_calls": [{"id": "call_r", "name": "show_weather", "arguments": {"city": "Rome"}}]})
    thread, first = new_id(), user("weather in Rome")
    events = loom.run("letta", [first], thread, tools=[WEATHER])
    call = of_type(events, "TOOL_CALL_START")[0]
    call_message = {"id": call["parentMessageId"], "role": "assistant", "toolCalls": [
        {"id": call["toolCallId"], "type": "function", "function": {"name": "show_weather",
                                                                     "arguments": '{"city": "Rome"}'}}]}
    events = loom.run("letta", [first, call_message, user("never mind")], thread, tools=[WEATHER])
    assert "waiting for a tool" in assert_run_error(events, "LETTA_PENDING_APPROVAL")


def test_model_failure_inside_letta_is_a_stream_error(loom, real_letta):
    real_letta.llm.script({"status": 500, "error_message": "the model fell over", "repeat": True})
    try:
        events = loom.run("letta", [user("hi")])
    finally:
        real_letta.llm.reset()
    message = assert_run_error(events, "LETTA_STREAM_ERROR")  # Letta's `event: error`, with the model's words
    assert "the model fell over" in message, message


def test_client_leaving_cancels_the_letta_run(loom, real_letta, agent_id):
    words = " ".join(f"w{i}" for i in range(60))
    real_letta.llm.script({"text": words, "token_delay_ms": 100})
    body = {"threadId": new_id(), "runId": new_id(), "messages": [user("long one")]}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{loom.url}/agents/letta", json=body) as response:
            for line in response.iter_lines():
                if '"TEXT_MESSAGE_CONTENT"' in line:
                    break  # leave mid-answer
    # loom cancels the conversation's run (Letta itself reads its model's answer to the end of the step).
    deadline = time.monotonic() + 10
    while True:
        [run] = real_letta.client().runs.list(agent_id=agent_id, order="desc", limit=1)
        if run.status == "cancelled" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (run.status, run.stop_reason) == ("cancelled", "cancelled")


def test_unknown_agent_and_bad_key(loom, real_letta, agent_id, tmp_path):
    events = loom.run("letta", [user("hi")], forwardedProps={"context": {"agent_id": "agent-nope"}})
    assert "agent-nope" in assert_run_error(events, "LETTA_AGENT_NOT_FOUND")
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL=DEAD_LLM, LOOM_LETTA_BASE_URL=real_letta.url,
                        LOOM_LETTA_API_KEY="wrong", LOOM_LETTA_AGENT_ID=agent_id, LOOM_LETTA_MAX_RETRIES="1").start()
    try:
        assert "LOOM_LETTA_API_KEY" in assert_run_error(server.run("letta", [user("hi")]), "LETTA_AUTH")
    finally:
        server.stop()


def test_wire_facts_of_the_real_server(real_letta, agent_id):
    """Where Letta differs from what its docs suggest: the shared checks the stand-in passes too."""
    url = real_letta.url
    conversation = new_conversation(url, KEY, agent_id)
    real_letta.llm.script({"tool_calls": [{"id": "call_f", "name": "conversation_search",
                                           "arguments": {"query": "x"}}]}, {"text": "ok"})
    status, frames = raw_turn(url, KEY, conversation, [{"role": "user", "content": "find x"}])
    assert status == 200
    assert_call_frames(frames, "tool_call_message", "call_f", "conversation_search", {"query": "x"})
    assert_turn_end(frames)
    arguments = {"label": "human", "new_string": "x"}
    real_letta.llm.script({"tool_calls": [{"id": "call_g", "name": "memory_insert", "arguments": arguments}]})
    status, frames = raw_turn(url, KEY, conversation, [{"role": "user", "content": "remember x"}])
    assert_call_frames(frames, "approval_request_message", "call_g", "memory_insert", arguments)
    assert_turn_end(frames, "requires_approval")
    assert_conflict_in_stream(*raw_turn(url, KEY, conversation, [{"role": "user", "content": "again"}]))
    assert_rest_facts(url, KEY, agent_id)
    assert user_messages_after_resend(url, KEY, agent_id) == ["same otid", "same otid"]


def test_a_cancelled_stream_ends_without_usage_or_done(real_letta, agent_id):
    url, conversation = real_letta.url, new_conversation(real_letta.url, KEY, agent_id)
    real_letta.llm.script({"text": " ".join(f"w{i}" for i in range(60)), "token_delay_ms": 100})
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(raw_turn, url, KEY, conversation, [{"role": "user", "content": "long"}])
        real_letta.llm.wait_request(lambda r: r["first_byte_at"] is not None, timeout=20)
        cancel = httpx.post(f"{url}/v1/conversations/{conversation}/cancel", timeout=30,
                            headers={"authorization": f"Bearer {KEY}"})
        assert cancel.status_code == 200, cancel.text
        assert_cancelled_stream(*reading.result(timeout=60))
