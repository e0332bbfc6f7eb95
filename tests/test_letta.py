"""The `letta` graph against the stand-in Letta server (tests/letta_server.py), driven by the real letta-client
inside loom: every message type, approvals, client tools, errors before and inside the stream, retries without a
second send, disconnects. The official @ag-ui/client and ag-ui-validate check the streams."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from letta_client import Letta

from tests.agui_js import run_agui_client
from tests.conftest import LoomServer, event_types, new_id, text_of, user
from tests.letta_process import LettaServer
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
from tests.metrics_scrape import delta, scrape
from tests.test_agui_clients import WEATHER, assert_clean

KEY = "letta-test-key"
DEAD_LLM = "http://127.0.0.1:9/v1"  # the letta graph never calls loom's own LLM


@pytest.fixture(scope="module")
def letta_srv():
    server = LettaServer(api_key=KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def agent_id(letta_srv) -> str:
    return Letta(base_url=letta_srv.url, api_key=KEY).agents.create(name="loom-test").id


@pytest.fixture(scope="module")
def loom(letta_srv, agent_id, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("loom-letta"), LOOM_LLM_BASE_URL=DEAD_LLM,
                        LOOM_LETTA_BASE_URL=letta_srv.url, LOOM_LETTA_API_KEY=KEY, LOOM_LETTA_AGENT_ID=agent_id,
                        LOOM_LETTA_MAX_RETRIES="2", LOOM_LETTA_TIMEOUT="2").start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_script(request):
    if "letta_srv" in request.fixturenames:
        request.getfixturevalue("letta_srv").reset(log_only=True)


def sends(letta_srv) -> list[dict]:
    """The message POSTs loom made (the bodies letta-client built)."""
    return [r for r in letta_srv.requests() if r["path"].endswith("/messages")]


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def assert_run_error(events: list[dict], code: str) -> str:
    assert event_types(events).count("RUN_ERROR") == 1 and events[-1]["type"] == "RUN_ERROR", event_types(events)
    assert "RUN_FINISHED" not in event_types(events) and events[-1]["code"] == code, events[-1]
    return events[-1]["message"]


def assert_nothing_overlaps(events: list[dict]) -> None:
    """Text messages and reasoning spans close before anything else opens, tool calls before the next text or
    reasoning (the strictest reading of AG-UI, which older clients enforce; parallel calls of one message may
    be open together, as with any model)."""
    open_: dict[str, set] = {"text": set(), "reasoning": set(), "call": set()}
    for e in events:
        if e["type"] in ("TEXT_MESSAGE_START", "REASONING_START"):
            assert not any(open_.values()), f"{e['type']} while {open_} is open"
            open_["text" if e["type"].startswith("TEXT") else "reasoning"].add(e["messageId"])
        elif e["type"] == "TOOL_CALL_START":
            assert not open_["text"] and not open_["reasoning"], f"TOOL_CALL_START while {open_} is open"
            open_["call"].add(e["toolCallId"])
        elif e["type"] in ("TEXT_MESSAGE_END", "REASONING_END"):
            open_["text" if e["type"].startswith("TEXT") else "reasoning"].discard(e["messageId"])
        elif e["type"] == "TOOL_CALL_END":
            open_["call"].discard(e["toolCallId"])


# -------------------------------------------------------------------------------------------- message types


def test_every_message_type_becomes_agui_events(loom, letta_srv):
    letta_srv.script({"steps": [
        {"ping": True},
        {"reasoning": "Let me compute."},
        {"tool_call": {"name": "calc", "arguments": {"x": 2}, "id": "call_a"}},
        {"tool_return": {"return": "4"}},
        {"hidden": "redacted"},
        {"tool_calls": [{"name": "look", "arguments": {"q": 1}, "id": "call_b"},
                        {"name": "look", "arguments": {"q": 2}, "id": "call_c"}]},
        {"tool_return": {"id": "call_b", "return": "one"}},
        {"tool_return": {"id": "call_c", "return": "two", "status": "error"}},
        {"raw": {"message_type": "event_message", "id": "e1", "event_type": "compaction"}},  # unknown: skipped
        {"assistant": "The answer is 4.", "parts": True},
    ], "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "reasoning_tokens": 3}})
    response, events = loom.post("letta", {"threadId": new_id(), "runId": new_id(), "messages": [user("2+2?")]})
    kinds = event_types(events)
    assert kinds[0] == "RUN_STARTED" and kinds[-1] == "RUN_FINISHED" and "RUN_ERROR" not in kinds
    assert_nothing_overlaps(events)
    assert of_type(events, "CUSTOM") == []
    assert ": keepalive\n\n" in response.text  # the ping, as an SSE comment every client ignores
    reasoning = [e["delta"] for e in of_type(events, "REASONING_MESSAGE_CONTENT")]
    assert "".join(reasoning[:3]) == "Let me compute." and reasoning[3] == "[reasoning hidden: redacted]"
    starts = of_type(events, "TOOL_CALL_START")
    assert [(s["toolCallId"], s["toolCallName"]) for s in starts] == [
        ("call_a", "calc"), ("call_b", "look"), ("call_c", "look")]
    args = {}
    for e in of_type(events, "TOOL_CALL_ARGS"):
        args[e["toolCallId"]] = args.get(e["toolCallId"], "") + e["delta"]
    assert {k: json.loads(v) for k, v in args.items()} == {"call_a": {"x": 2}, "call_b": {"q": 1}, "call_c": {"q": 2}}
    results = [(r["toolCallId"], r["content"]) for r in of_type(events, "TOOL_CALL_RESULT")]
    assert results == [("call_a", "4"), ("call_b", "one"), ("call_c", "two")]
    # Each result goes out as soon as its call is answered: before the next assistant message starts.
    assert kinds.index("TOOL_CALL_RESULT") < kinds.index("REASONING_START", kinds.index("TOOL_CALL_END"))
    assert text_of(events) == "The answer is 4."
    assert events[-1]["outcome"] == {"type": "success"}
    [usage] = events[-1]["usage"]
    assert (usage["provider"], usage["inputTokens"], usage["outputTokens"], usage["totalTokens"]) == (
        "letta", 30, 9, 39)
    [body] = [r["body"] for r in sends(letta_srv)]
    assert (body["streaming"], body["stream_tokens"], body["include_pings"]) == (True, True, True)
    [message] = body["messages"]
    assert message["role"] == "user" and message["content"] == "2+2?" and message["otid"]


def test_official_client_and_validator_accept_letta_runs(loom, letta_srv):
    letta_srv.script({"steps": [{"reasoning": "Hmm."}, {"tool_call": {"name": "calc", "arguments": {"x": 1}}},
                                {"tool_return": {"return": "1"}}, {"assistant": "One."}]},
                     {"steps": [{"ping": True}, {"assistant": "Still one."}]})
    result = run_agui_client(f"{loom.url}/agents/letta", [{"op": "user", "content": "1?"},
                                                          {"op": "user", "content": "sure?"}])
    assert_clean(result)
    assert [m["role"] for m in result["messages"]] == [
        "user", "reasoning", "assistant", "tool", "assistant", "user", "assistant"]
    assert result["messages"][-1]["content"] == "Still one."
    # The second run sent only the new user turn, to the same Letta conversation (one per thread).
    first, second = sends(letta_srv)
    assert first["path"] == second["path"]
    assert [m["content"] for m in second["body"]["messages"]] == ["sure?"]


def test_one_letta_conversation_per_thread(loom, letta_srv):
    thread_a, thread_b, first = new_id(), new_id(), user("a1")
    answer = loom.run("letta", [first], thread_a)
    loom.run("letta", [user("b1")], thread_b)
    second = loom.run("letta", [first, *_assistant_of(answer), user("a2")], thread_a)
    assert text_of(second) == "echo: a2"
    paths = [r["path"] for r in sends(letta_srv)]
    assert paths[0] != paths[1] and paths[2] == paths[0]
    conversation = letta_srv.state()["conversations"][paths[0].split("/")[3]]
    assert [m.get("content") for m in conversation["messages"] if m["message_type"] == "user_message"] == [
        "a1", "a2"]


def test_a_conversation_deleted_on_the_server_is_replaced(loom, letta_srv):
    thread, first = new_id(), user("before")
    answer = loom.run("letta", [first], thread)
    old = sends(letta_srv)[0]["path"].split("/")[3]
    Letta(base_url=letta_srv.url, api_key=KEY).conversations.delete(old)
    events = loom.run("letta", [first, *_assistant_of(answer), user("after")], thread)
    assert text_of(events) == "echo: after"
    assert [r["status"] for r in sends(letta_srv)] == [200, 404, 200]
    assert sends(letta_srv)[-1]["path"].split("/")[3] != old


def _assistant_of(events: list[dict]) -> list[dict]:
    message_id = of_type(events, "TEXT_MESSAGE_START")[0]["messageId"]
    return [{"id": message_id, "role": "assistant", "content": text_of(events)}]


# ---------------------------------------------------------------------------------- approvals, client tools


@pytest.mark.parametrize("decision, payload, approve", [
    ("approve", None, True), ("reject", {"approved": False, "reason": "not today"}, False)])
def test_approval_request_is_an_interrupt_and_resume_sends_the_decision(loom, letta_srv, decision, payload, approve):
    letta_srv.script({"steps": [{"reasoning": "Risky."}, {"approval": {"name": "wipe", "arguments": {"table": "t"},
                                                                       "id": "call_wipe"}}]})
    step = {"op": "resume", "decision": decision, **({"payload": payload} if payload else {})}
    result = run_agui_client(f"{loom.url}/agents/letta", [{"op": "user", "content": "wipe t"}, step])
    assert_clean(result)
    interrupted, resumed = result["runs"]
    assert interrupted["outcome"] == "interrupt"
    [pending] = interrupted["pendingInterrupts"]
    assert (pending["id"], pending["reason"], pending["toolCallId"]) == ("call_wipe", "tool_call", "call_wipe")
    assert "wipe" in pending["message"]
    [approval] = sends(letta_srv)[-1]["body"]["messages"]
    assert approval["type"] == "approval" and approval["otid"]
    assert approval["approvals"][0]["tool_call_id"] == "call_wipe" and approval["approvals"][0]["approve"] is approve
    if not approve:
        assert approval["approvals"][0]["reason"] == "not today"
    # The resumed run answers the original call: only TOOL_CALL_RESULT, no second START.
    tool_events = [e for e in resumed["wireEvents"] if e["type"].startswith("TOOL_CALL")]
    assert [(e["type"], e["toolCallId"]) for e in tool_events] == [("TOOL_CALL_RESULT", "call_wipe")]
    assert result["messages"][-1]["content"] == "Done."


def test_an_approval_closed_by_an_empty_arguments_frame_keeps_its_arguments(loom, letta_srv):
    """Without token streaming Letta sends an approval request whole, then a frame with `name` null and
    arguments "{}": the call's arguments are the first frame's."""
    whole = {"name": "wipe", "arguments": '{"table": "t"}', "tool_call_id": "call_whole"}
    closing = {"name": None, "arguments": "{}", "tool_call_id": "call_whole"}
    letta_srv.script({"steps": [{"raw": {"id": "message-a", "message_type": "approval_request_message",
                                         "tool_call": call, "tool_calls": call}} for call in (whole, closing)]})
    result = run_agui_client(f"{loom.url}/agents/letta", [{"op": "user", "content": "wipe t"}])
    [run] = result["runs"]
    [pending] = run["pendingInterrupts"]
    assert pending["message"] == 'Allow wipe({"table": "t"})?'
    args = "".join(e["delta"] for e in of_type(run["wireEvents"], "TOOL_CALL_ARGS"))
    assert json.loads(args) == {"table": "t"}


def test_frontend_tools_are_letta_client_tools(loom, letta_srv):
    letta_srv.script({"steps": [{"approval": {"name": "show_weather", "arguments": {"city": "Oslo"}, "id": "call_w"}}]})
    result = run_agui_client(f"{loom.url}/agents/letta", [
        {"op": "user", "content": "weather in Oslo"},
        {"op": "tool_results", "results": {"show_weather": "rendered: 4°C"}},
    ], tools=[WEATHER])
    assert_clean(result)
    first, second = result["runs"]
    assert first["outcome"] == "success" and first["pendingToolCallIds"] == ["call_w"]
    opened, answered = sends(letta_srv)
    assert opened["body"]["client_tools"][0]["name"] == "show_weather"
    [tool_return] = answered["body"]["messages"]
    assert tool_return["type"] == "tool_return"
    assert tool_return["tool_returns"][0] == {
        "type": "tool", "tool_call_id": "call_w", "status": "success", "tool_return": "rendered: 4°C"}
    assert result["messages"][-1]["content"] == "Got: rendered: 4°C"


def test_new_message_while_a_client_tool_is_pending(loom, letta_srv):
    letta_srv.script({"steps": [{"approval": {"name": "show_weather", "arguments": {"city": "Rome"}}}]})
    thread, first = new_id(), user("weather in Rome")
    events = loom.run("letta", [first], thread, tools=[WEATHER])
    call = of_type(events, "TOOL_CALL_START")[0]
    call_message = {"id": call["parentMessageId"], "role": "assistant", "toolCalls": [
        {"id": call["toolCallId"], "type": "function", "function": {"name": "show_weather",
                                                                     "arguments": '{"city": "Rome"}'}}]}
    events = loom.run("letta", [first, call_message, user("never mind")], thread, tools=[WEATHER])
    assert "waiting for a tool" in assert_run_error(events, "LETTA_PENDING_APPROVAL")


# --------------------------------------------------------------------------------------- stop reasons, errors


def test_an_early_stop_reason_is_reported(loom, letta_srv):
    letta_srv.script({"steps": [{"assistant": "Partial"}], "stop": "max_steps"})
    events = loom.run("letta", [user("go")])
    [notice] = of_type(events, "CUSTOM")
    assert notice["name"] == "letta.stop_reason" and notice["value"]["stopReason"] == "max_steps"
    assert events[-1]["type"] == "RUN_FINISHED" and text_of(events) == "Partial"


@pytest.mark.parametrize("turn, code, words", [
    ({"steps": [{"assistant": "Half an"}], "stop": "llm_api_error",
      "error": {"error_type": "llm_timeout", "message": "The LLM request timed out. Please try again."}},
     "LETTA_STREAM_ERROR", "The LLM request timed out"),
    ({"steps": [{"assistant": "Half an"}], "cut": True}, "LETTA_STREAM_ERROR", "closed the stream"),
    ({"steps": [{"assistant": "Half an"}], "no_done": True}, "LETTA_STREAM_ERROR", "ended before"),
    ({"steps": [{"assistant": "Half an"}, {"sleep_ms": 2600}]}, "LETTA_TIMEOUT", "LOOM_LETTA_TIMEOUT"),
    ({"steps": [{"assistant": "Half an"}], "stop": "cancelled"}, "LETTA_STOPPED", "cancelled"),
    ({"status": 401, "detail": "Invalid API key"}, "LETTA_AUTH", "LOOM_LETTA_API_KEY"),
    ({"status": 422, "detail": "messages: field required"}, "LETTA_BAD_REQUEST", "field required"),
    ({"status": 429, "retry_after": 0, "repeat": 3}, "LETTA_RATE_LIMITED", "rate limiting"),
    ({"status": 409, "detail": "Conversation is busy", "repeat": 3}, "LETTA_BUSY", "busy"),
])
def test_letta_failures_end_in_a_specific_run_error(loom, letta_srv, turn, code, words):
    repeat = turn.pop("repeat", 1)
    letta_srv.script(*[turn] * repeat)
    before = scrape(loom.url)
    events = loom.run("letta", [user("hi")])
    assert words in assert_run_error(events, code)
    if turn.get("status"):  # a refused send (not a stream that stopped early)
        assert delta(before, scrape(loom.url), "loom_letta_requests_total", outcome=code) == 1
    if repeat > 1:  # refused sends are retried: 1 + LOOM_LETTA_MAX_RETRIES attempts, then the specific error
        assert len(sends(letta_srv)) == repeat


def test_unknown_agent(loom, letta_srv):
    events = loom.run("letta", [user("hi")], forwardedProps={"context": {"agent_id": "agent-nope"}})
    assert "agent-nope" in assert_run_error(events, "LETTA_AGENT_NOT_FOUND")
    assert sends(letta_srv) == []


def test_bad_key_and_unreachable_server(letta_srv, agent_id, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    for base_url, key, code, words in ((letta_srv.url, "wrong", "LETTA_AUTH", "LOOM_LETTA_API_KEY"),
                                       (dead, KEY, "LETTA_UNREACHABLE", "LOOM_LETTA_BASE_URL")):
        server = LoomServer(tmp_path, LOOM_LLM_BASE_URL=DEAD_LLM, LOOM_LETTA_BASE_URL=base_url,
                            LOOM_LETTA_API_KEY=key, LOOM_LETTA_AGENT_ID=agent_id, LOOM_LETTA_MAX_RETRIES="1").start()
        try:
            assert words in assert_run_error(server.run("letta", [user("hi")]), code)
        finally:
            server.stop()


# ------------------------------------------------------------------------------------ retries, double sends


@pytest.mark.parametrize("failure", [
    {"status": 429, "retry_after": 0},  # refused: retried at once
    {"status": 409, "detail": "Conversation is busy"},  # refused: retried with backoff
    {"status": 500, "detail": "database hiccup"},  # ambiguous, and the message did not arrive: retried
])
def test_retried_send_carries_the_same_otid_and_lands_once(loom, letta_srv, failure):
    letta_srv.script(failure, {"steps": [{"assistant": "Made it."}]})
    before = scrape(loom.url)
    events = loom.run("letta", [user("once")])
    assert text_of(events) == "Made it."
    after = scrape(loom.url)
    assert delta(before, after, "loom_letta_requests_total", outcome="retry") == 1
    assert delta(before, after, "loom_letta_requests_total", outcome="success") == 1
    attempts = sends(letta_srv)
    assert [a["status"] for a in attempts] == [failure["status"], 200]
    assert attempts[0]["body"]["messages"] == attempts[1]["body"]["messages"]
    conversation = letta_srv.state()["conversations"][attempts[0]["path"].split("/")[3]]
    assert [m["content"] for m in conversation["messages"] if m["message_type"] == "user_message"] == ["once"]


def test_a_message_that_may_have_been_accepted_is_not_sent_twice(loom, letta_srv):
    # As on Letta, the run goes on after the lost response and stores the message only as its first step ends.
    letta_srv.script({"status": 500, "detail": "gateway lost the response", "accept": True, "accept_ms": 600},
                     {"steps": [{"assistant": "A second answer."}]})
    response, events = loom.post("letta", {"threadId": new_id(), "runId": new_id(), "messages": [user("only once")]})
    message = assert_run_error(events, "LETTA_SERVER_ERROR")
    assert "did not send it again" in message
    assert ": keepalive" in response.text  # the stream said it was alive while Letta's run was waited for
    [attempt] = sends(letta_srv)  # the conversation was checked instead, once its run had ended
    state = letta_srv.state()
    conversation = state["conversations"][attempt["path"].split("/")[3]]
    assert [m["content"] for m in conversation["messages"] if m["message_type"] == "user_message"] == ["only once"]
    assert letta_srv.requests("/v1/runs", "GET")  # loom asked whether a run was still going


# ------------------------------------------------------------------------------------------------ disconnect


def test_client_leaving_cancels_the_letta_stream(loom, letta_srv):
    letta_srv.script({"steps": [{"assistant": "Thinking about"}], "hang": True})
    body = {"threadId": new_id(), "runId": new_id(), "messages": [user("long one")]}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{loom.url}/agents/letta", json=body) as response:
            for line in response.iter_lines():
                if '"TEXT_MESSAGE_CONTENT"' in line:
                    break  # leave mid-answer
    letta_srv.wait(lambda records: any(r["outcome"] == "disconnected" for r in records))
    letta_srv.wait(lambda records: any(r["path"].endswith("/cancel") for r in records))


# ------------------------------------------------------------------------------------- the stand-in's wire


def test_the_stand_in_speaks_like_the_real_server(letta_srv, agent_id):
    """The checks tests/test_letta_real.py runs against the real Letta server."""
    url, conversation = letta_srv.url, new_conversation(letta_srv.url, KEY, agent_id)
    letta_srv.script({"steps": [{"tool_call": {"name": "conversation_search", "arguments": {"query": "x"},
                                               "id": "call_f"}}, {"tool_return": {"return": "[]"}},
                                {"assistant": "ok"}]})
    status, frames = raw_turn(url, KEY, conversation, [{"role": "user", "content": "find x"}])
    assert_call_frames(frames, "tool_call_message", "call_f", "conversation_search", {"query": "x"})
    assert_turn_end(frames)
    arguments = {"label": "human", "new_string": "x"}
    letta_srv.script({"steps": [{"approval": {"name": "memory_insert", "arguments": arguments, "id": "call_g"}}]})
    status, frames = raw_turn(url, KEY, conversation, [{"role": "user", "content": "remember x"}])
    assert_call_frames(frames, "approval_request_message", "call_g", "memory_insert", arguments)
    assert_turn_end(frames, "requires_approval")
    assert_conflict_in_stream(*raw_turn(url, KEY, conversation, [{"role": "user", "content": "again"}]))
    letta_srv.script({"steps": [{"ping": True}, {"assistant": "Thinking"}], "stop": "cancelled"})
    assert_cancelled_stream(*raw_turn(url, KEY, new_conversation(url, KEY, agent_id),
                                      [{"role": "user", "content": "long"}]))
    assert_rest_facts(url, KEY, agent_id)
    assert user_messages_after_resend(url, KEY, agent_id) == ["same otid", "same otid"]
