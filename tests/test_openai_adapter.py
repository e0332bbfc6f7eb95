"""adapters/openai as pure functions: the cases the end-to-end tests reach only indirectly."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from loom.adapters.openai import confirm
from loom.adapters.openai.inbound import RequestError, agui_messages, chat_request, thread_hint
from loom.adapters.openai.outbound import ChunkTranslator, usage_of
from loom.adapters.openai.threads import adopt_stored_turns


def test_confirm_ids_round_trip_and_answers():
    call_id = confirm.call_id("thread:with|odd chars", "call_1")
    assert confirm.parse_call_id(call_id) == ("thread:with|odd chars", "call_1")
    assert confirm.parse_call_id("call_1") is None and confirm.parse_call_id(confirm.PREFIX + "%%%") is None
    assert confirm.decision("Yes.")["payload"] == {"approved": True}
    assert confirm.decision('{"approved": false}')["payload"] == {"approved": False}
    assert confirm.decision("rather not")["payload"] == {"approved": False, "reason": "rather not"}


def test_ids_are_stable_and_change_with_content():
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    once, again = agui_messages(history, "t"), agui_messages(history, "t")
    assert [m["id"] for m in once] == [m["id"] for m in again]
    edited = agui_messages([history[0], {"role": "assistant", "content": "c"}], "t")
    assert once[0]["id"] == edited[0]["id"] and once[1]["id"] != edited[1]["id"]
    assert agui_messages(history, "other")[0]["id"] != once[0]["id"]


def request(**fields) -> dict:
    return {"model": "agent", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize("fields, param", [
    ({"messages": "hi"}, "messages"), ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "loom_confirm"}}]}, "tools[0].function.name"),
    ({"response_format": {"type": "json_object"}}, "response_format"), ({"loom": []}, "loom"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
])
def test_refusals_name_the_parameter(fields, param):
    with pytest.raises(RequestError) as error:
        chat_request(request(**fields), thread_id=None, context_fields=frozenset(), headers={}, max_messages=10,
                     max_tools=10)
    assert error.value.param == param


def test_adopting_stored_turns():
    sent = agui_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "It is 42."},
                          {"role": "user", "content": "thanks"}], "t")
    stored = [HumanMessage("q", id=sent[0]["id"]),
              AIMessage("", id="ai-1", tool_calls=[{"id": "c", "name": "calculator", "args": {}}]),
              ToolMessage("42", tool_call_id="c", id="tool-1"), AIMessage("It is  42.", id="ai-2")]
    adopted = adopt_stored_turns(sent, stored)
    assert [m["id"] for m in adopted] == [sent[0]["id"], "ai-1", "tool-1", "ai-2", sent[2]["id"]]
    stored[-1] = AIMessage("Something else.", id="ai-2")  # the client shows another answer: left as sent
    assert adopt_stored_turns(sent, stored) == sent
    pending = stored[:2]  # a turn waiting for tool results is continued by what was sent
    assert adopt_stored_turns(sent, pending) == sent


def test_client_and_server_tool_calls_and_errors():
    t = ChunkTranslator("id", "agent", "thread", client_tools=frozenset({"weather"}), collect=True)
    for event in [{"type": "RUN_STARTED"},
                  {"type": "TOOL_CALL_START", "toolCallId": "s", "toolCallName": "calculator"},
                  {"type": "TOOL_CALL_ARGS", "toolCallId": "s", "delta": "{}"},
                  {"type": "TOOL_CALL_RESULT", "toolCallId": "s", "content": "2"},
                  {"type": "TOOL_CALL_START", "toolCallId": "w", "toolCallName": "weather"},
                  {"type": "TOOL_CALL_ARGS", "toolCallId": "w", "delta": '{"city":"Oslo"}'}]:
        t.feed(event)
    finished = t.feed({"type": "RUN_FINISHED", "outcome": {"type": "success", "pendingToolCallIds": ["w"]},
                       "usage": [{"inputTokens": 3, "outputTokens": 2}, {"inputTokens": 1, "outputTokens": 1}]})
    assert finished[-1]["choices"][0]["finish_reason"] == "tool_calls"
    completion = t.completion()
    assert completion["choices"][0]["message"]["tool_calls"] == [
        {"id": "w", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]
    assert completion["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    failed = ChunkTranslator("id", "agent", "thread", client_tools=frozenset())
    assert failed.feed({"type": "RUN_ERROR", "code": "LLM_TIMEOUT", "message": "slow"}) == [
        {"error": {"message": "slow", "type": "server_error", "param": None, "code": "LLM_TIMEOUT"}}]
    assert usage_of(None) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_thread_hints_and_openwebui_tasks():
    chat = {"x-openwebui-chat-id": "c1"}
    turn = {"messages": [{"role": "user", "content": "hi"}]}
    title = {"messages": [{"role": "user", "content": "### Task:\nGenerate a title.\n<chat_history>\nUSER: hi\n"
                                                      "</chat_history>"}]}
    assert thread_hint(chat, "agent", turn) == "openwebui-c1-agent"
    assert thread_hint(chat, "agent", title) is None  # a background task: its own fresh thread
    assert thread_hint({**chat, "x-loom-task": "title_generation"}, "agent", turn) is None
    assert thread_hint({**chat, "x-loom-thread": "mine"}, "agent", turn) == "mine"
    assert thread_hint({}, "agent", turn) is None


def test_sse_frames_are_the_chunks_json():
    t = ChunkTranslator("id", "agent", "thread", client_tools=frozenset({"w"}), include_usage=True)
    chunks = [c for e in [{"type": "RUN_STARTED"}, {"type": "TEXT_MESSAGE_START"},
                          {"type": "TEXT_MESSAGE_CONTENT", "delta": 'a "quoted" ü'},
                          {"type": "TOOL_CALL_START", "toolCallId": "c", "toolCallName": "w"},
                          {"type": "RUN_FINISHED", "outcome": {"type": "success"}}] for c in t.feed(e)]
    assert len(chunks) == 5
    for chunk in chunks:
        frame = t.sse(chunk)
        assert frame.startswith("data: ") and frame.endswith("\n\n") and json.loads(frame[6:]) == chunk
