"""RunAgentInput -> graph input: message conversion, reconciliation with the checkpoint, context, resume."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ag_ui.core import RunAgentInput
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, ToolMessage
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages
from langgraph.types import Interrupt

from loom.adapters.agui.inbound import (
    InputError,
    graph_messages,
    needs_answer,
    reconcile,
    resume_command,
    runtime_context,
)
from loom.adapters.agui.messages import to_agui, to_langchain
from loom.graphs.context import BaseContext


def run_input(messages, **extra) -> RunAgentInput:
    return RunAgentInput.model_validate({"threadId": "t", "runId": "r", "messages": messages, **extra})


STORED = [HumanMessage("hi", id="u1"), AIMessage("hello", id="a1"), HumanMessage("2+2?", id="u2"),
          AIMessage("4", id="a2")]


def apply(stored, update):
    return add_messages(stored, update)


def test_resent_history_appends_only_new_turns():
    sent = [*STORED, HumanMessage("thanks", id="u3")]
    update = reconcile(STORED, sent)
    assert [m.id for m in update] == ["u3"]
    assert [m.id for m in apply(STORED, update)] == ["u1", "a1", "u2", "a2", "u3"]


def test_identical_history_changes_nothing():
    assert reconcile(STORED, list(STORED)) == []
    assert not needs_answer(STORED)


def test_regenerate_forks_before_the_last_answer():
    update = reconcile(STORED, STORED[:3])
    assert isinstance(update[0], RemoveMessage) and update[0].id == REMOVE_ALL_MESSAGES
    result = apply(STORED, update)
    assert [m.id for m in result] == ["u1", "a1", "u2"]
    assert needs_answer(result)


def test_edited_user_message_forks_from_it():
    sent = [STORED[0], STORED[1], HumanMessage("3+3?", id="u2")]
    result = apply(STORED, reconcile(STORED, sent))
    assert [(m.id, m.content) for m in result] == [("u1", "hi"), ("a1", "hello"), ("u2", "3+3?")]


def test_ids_minted_anew_replace_instead_of_duplicating():
    sent = [HumanMessage("hi", id="x1"), AIMessage("hello", id="x2"), HumanMessage("more", id="x3")]
    result = apply(STORED, reconcile(STORED, sent))
    assert [m.id for m in result] == ["x1", "x2", "x3"]


def test_unknown_thread_takes_the_full_history():
    assert [m.id for m in reconcile([], STORED)] == ["u1", "a1", "u2", "a2"]


def test_assistant_messages_match_by_id_even_if_rendered_differently():
    """Clients drop reasoning or strip tool blocks from assistant text: that is not an edit."""
    sent = [STORED[0], AIMessage("hello (rendered)", id="a1"), HumanMessage("next", id="u9")]
    assert [m.id for m in reconcile(STORED[:2], sent)] == ["u9"]


def test_conversion_round_trip_keeps_ids_tool_calls_and_errors():
    messages = [
        {"id": "u1", "role": "user", "content": "x"},
        {"id": "a1", "role": "assistant", "toolCalls": [
            {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"e": "1"}'}}]},
        {"id": "t1", "role": "tool", "toolCallId": "c1", "content": "boom", "error": "boom"},
        {"id": "s1", "role": "activity", "activityType": "x", "content": {}},
    ]
    converted = to_langchain(run_input(messages).messages)
    assert [type(m).__name__ for m in converted] == ["HumanMessage", "AIMessage", "ToolMessage"]
    assert converted[1].tool_calls[0]["args"] == {"e": "1"}
    assert converted[2].status == "error"
    assert [m["id"] for m in to_agui(converted)] == ["u1", "a1", "t1"]


def test_image_parts_become_openai_image_blocks():
    messages = [{"id": "u1", "role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "url", "value": "https://example.invalid/cat.png"}}]}]
    [message] = to_langchain(run_input(messages).messages)
    assert message.content[1] == {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}


@pytest.mark.parametrize("messages, field", [
    ([{"id": "a", "role": "tool", "toolCallId": "nope", "content": "x"}], "messages[0].toolCallId"),
    ([{"id": "a", "role": "assistant", "toolCalls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}],
     "messages[0].toolCalls[0].function.arguments"),
    ([{"id": "a", "role": "user", "content": "x"}, {"id": "a", "role": "user", "content": "y"}], "messages"),
])
def test_unusable_messages_name_the_field(messages, field):
    with pytest.raises(InputError) as err:
        graph_messages(run_input(messages), [])
    assert err.value.field == field


@dataclass(kw_only=True)
class Ctx(BaseContext):
    max_iterations: int = field(default=3)


def test_context_overrides_are_validated_and_server_fields_protected():
    ctx = runtime_context(Ctx, run_input([], forwardedProps={"context": {"max_iterations": "5"}},
                                         tools=[{"name": "f", "description": "d", "parameters": {}}]), "alice")
    assert (ctx.max_iterations, ctx.user_id, ctx.frontend_tools[0]["name"]) == (5, "alice", "f")
    for bad, field_ in [({"user_id": "mallory"}, "forwardedProps.context.user_id"),
                        ({"nope": 1}, "forwardedProps.context.nope"),
                        ({"max_iterations": "many"}, "forwardedProps.context.max_iterations")]:
        with pytest.raises(InputError) as err:
            runtime_context(Ctx, run_input([], forwardedProps={"context": bad}), "alice")
        assert err.value.field == field_


def test_resume_must_answer_every_open_interrupt():
    pending = [Interrupt(value={"interrupts": [{"id": "c1", "reason": "tool_call", "toolCallId": "c1"},
                                               {"id": "c2", "reason": "tool_call", "toolCallId": "c2"}]},
                         id="lg1")]
    both = [{"interruptId": "c1", "status": "resolved"}, {"interruptId": "c2", "status": "cancelled"}]
    command = resume_command(run_input([], resume=both), pending)
    assert command.resume == {"c1": {"status": "resolved", "payload": None},
                              "c2": {"status": "cancelled", "payload": None}}
    for resume, code in [(both[:1], "incomplete_resume"), ([*both, {"interruptId": "zz", "status": "resolved"}],
                                                           "stale_resume")]:
        with pytest.raises(InputError) as err:
            resume_command(run_input([], resume=resume), pending)
        assert err.value.code == code
    with pytest.raises(InputError) as err:
        resume_command(run_input([], resume=both), [])
    assert err.value.code == "no_pending_interrupt"


def test_tool_message_after_pending_frontend_call_needs_an_answer():
    history = [HumanMessage("x", id="u"), AIMessage("", id="a", tool_calls=[{"id": "f", "name": "f", "args": {}}]),
               ToolMessage("ok", tool_call_id="f", id="t")]
    assert needs_answer(history)
