"""The `agent` graph end to end: loom under uvicorn, the scripted LLM over HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import json

from tests.conftest import event_types, new_id, text_of, user


def calls(*pairs) -> dict:
    return {"tool_calls": [{"id": f"call_{new_id()[:8]}", "name": name, "arguments": args} for name, args in pairs]}


def llm_messages(llm, index: int) -> list[dict]:
    return llm.requests()[index]["body"]["messages"]


def results(events) -> dict[str, str]:
    return {e["toolCallId"]: e["content"] for e in events if e["type"] == "TOOL_CALL_RESULT"}


def test_plain_turn_then_second_turn(loom, llm):
    llm.script({"text": "Hello, Ada."}, {"text": "You said your name is Ada."})
    thread = new_id()
    first = [user("Hi, I am Ada")]
    events = loom.run("agent", first, thread)
    assert text_of(events) == "Hello, Ada."
    assert events[0]["protocolVersion"] == "1.0" and events[-1]["outcome"] == {"type": "success"}
    assert events[-1]["usage"][0]["outputTokens"] > 0
    answer_id = next(e["messageId"] for e in events if e["type"] == "TEXT_MESSAGE_START")

    history = [*first, {"id": answer_id, "role": "assistant", "content": "Hello, Ada."}, user("What is my name?")]
    events = loom.run("agent", history, thread)
    assert text_of(events) == "You said your name is Ada."
    sent = llm_messages(llm, 1)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]  # history once, not twice
    assert "run graph=agent thread=" + thread in loom.log()


def test_backend_tools_run_concurrently_and_feed_the_model(loom, llm):
    llm.script(calls(("calculator", {"expression": "6*7"}), ("slow_lookup", {"seconds": 0.4}),
                     ("slow_lookup", {"seconds": 0.4})),
               {"text": "It is 42."})
    events = loom.run("agent", [user("6*7, and look things up")])
    out = list(results(events).values())
    assert out[0] == "42"
    spans = [json.loads(o) for o in out[1:]]
    assert spans[0]["started"] < spans[1]["ended"] and spans[1]["started"] < spans[0]["ended"], "ran one by one"
    tool_messages = [m for m in llm_messages(llm, 1) if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == out
    assert text_of(events) == "It is 42."
    steps = [e["stepName"] for e in events if e["type"] == "STEP_STARTED"]
    assert steps == ["call_model", "dispatch_tools", "call_model"]


def test_failing_and_slow_tools_become_error_results(loom, llm):
    llm.script(calls(("flaky_service", {"query": "x"}), ("slow_lookup", {"seconds": 5}), ("no_such_tool", {})),
               {"text": "Both failed."})
    events = loom.run("agent", [user("try")], forwardedProps={"context": {"tool_timeout": 0.3}})
    flaky, slow, unknown = results(events).values()
    assert flaky.startswith("Error: ConnectionError: service unavailable")
    assert "did not finish within 0.3 s" in slow
    assert "no tool named 'no_such_tool'" in unknown
    assert text_of(events) == "Both failed."  # the model went on after the failures
    assert events[-1]["outcome"] == {"type": "success"}


def test_iteration_bound_forces_a_final_answer_without_tools(loom, llm):
    llm.script(calls(("calculator", {"expression": "1+1"})), calls(("calculator", {"expression": "2+2"})),
               {"text": "Done."})
    events = loom.run("agent", [user("loop")], forwardedProps={"context": {"max_iterations": 2}})
    bodies = [r["body"] for r in llm.requests()]
    assert ["tools" in b for b in bodies] == [True, True, False]
    assert "tool budget" in bodies[2]["messages"][0]["content"]
    assert text_of(events) == "Done."


def test_reasoning_content_streams_as_reasoning_events(loom, llm):
    llm.script({"reasoning": "Thinking it over", "text": "Answer."})
    events = loom.run("agent", [user("why?")])
    kinds = event_types(events)
    assert kinds.index("REASONING_START") < kinds.index("REASONING_END") < kinds.index("TEXT_MESSAGE_START")
    reasoning = "".join(e["delta"] for e in events if e["type"] == "REASONING_MESSAGE_CONTENT")
    assert reasoning == "Thinking it over"


def test_client_context_and_runtime_context_reach_the_model(loom, llm):
    llm.script({"text": "ok"})
    loom.run("agent", [user("hi")], context=[{"description": "Current page", "value": "Billing settings"}],
             forwardedProps={"context": {"system_prompt": "You are terse.", "model": "other-model"}})
    body = llm.requests()[0]["body"]
    assert body["model"] == "other-model"
    assert body["messages"][0]["content"].startswith("You are terse.")
    assert "Current page: Billing settings" in body["messages"][0]["content"]


# --------------------------------------------------------------------------------------------- threads


def _answer_id(events) -> str:
    return next(e["messageId"] for e in events if e["type"] == "TEXT_MESSAGE_START")


def test_resent_history_regenerate_and_edit(loom, llm):
    thread = new_id()
    u1, u2 = user("first"), user("second")
    llm.script({"text": "A1"}, {"text": "A2"}, {"text": "A2 again"}, {"text": "A2 edited"}, {"text": "A3"})
    a1 = {"id": _answer_id(loom.run("agent", [u1], thread)), "role": "assistant", "content": "A1"}
    a2_events = loom.run("agent", [u1, a1, u2], thread)
    a2 = {"id": _answer_id(a2_events), "role": "assistant", "content": "A2"}

    # Regenerate: the same history without the last answer forks instead of appending.
    regenerated = loom.run("agent", [u1, a1, u2], thread)
    assert text_of(regenerated) == "A2 again"
    assert [m["content"] for m in llm_messages(llm, 2)][1:] == ["first", "A1", "second"]

    # Edit: the second user message changes (same id): the thread forks from it.
    loom.run("agent", [u1, a1, {**u2, "content": "second, edited"}], thread)
    assert [m["content"] for m in llm_messages(llm, 3)][1:] == ["first", "A1", "second, edited"]

    # The next turn sees the edited branch only, and nothing twice.
    edited_answer = {"id": "whatever-the-client-had", "role": "assistant", "content": "A2 edited"}
    loom.run("agent", [u1, a1, {**u2, "content": "second, edited"}, edited_answer, user("third")], thread)
    contents = [m["content"] for m in llm_messages(llm, 4)][1:]
    assert contents == ["first", "A1", "second, edited", "A2 edited", "third"]
    assert a2["id"] not in json.dumps(llm.requests()[4]["body"])


def test_history_with_fresh_ids_each_turn_is_not_duplicated(loom, llm):
    """A stateless client minting new ids every turn must not double the thread."""
    thread = new_id()
    llm.script({"text": "A1"}, {"text": "A2"})
    loom.run("agent", [user("one")], thread)
    loom.run("agent", [user("one"), {"id": new_id(), "role": "assistant", "content": "A1"}, user("two")], thread)
    assert [m["content"] for m in llm_messages(llm, 1)][1:] == ["one", "A1", "two"]


def test_unknown_thread_with_full_history_and_restart_on_same_database(loom, llm):
    thread = new_id()
    llm.script({"text": "A1"}, {"text": "A2"}, {"text": "A3"})
    u1 = user("remember 7")
    a1 = {"id": _answer_id(loom.run("agent", [u1], thread)), "role": "assistant", "content": "A1"}
    loom.restart()
    u2 = user("what number?")
    loom.run("agent", [u1, a1, u2], thread)
    assert [m["content"] for m in llm_messages(llm, 1)][1:] == ["remember 7", "A1", "what number?"]
    # A thread this server never saw, arriving with its whole history (another replica's thread).
    loom.run("agent", [user("x", "ux"), {"id": "ax", "role": "assistant", "content": "y"}, user("z")], new_id())
    assert [m["content"] for m in llm_messages(llm, 2)][1:] == ["x", "y", "z"]


def test_resending_a_finished_history_is_a_no_op(loom, llm):
    thread = new_id()
    llm.script({"text": "A1"})
    u1 = user("hi")
    a1 = {"id": _answer_id(loom.run("agent", [u1], thread)), "role": "assistant", "content": "A1"}
    events = loom.run("agent", [u1, a1], thread)
    assert event_types(events) == ["RUN_STARTED", "RUN_FINISHED"]
    assert len(llm.requests()) == 1


def test_new_message_after_an_unanswered_frontend_call_still_runs(loom, llm):
    """The user wrote again instead of running the client tool: the model is told the call got no result."""
    thread = new_id()
    widget = {"name": "show_map", "description": "Show a map.", "parameters": {"type": "object", "properties": {}}}
    llm.script({"tool_calls": [{"id": "call_map", "name": "show_map", "arguments": {}}]}, {"text": "Sure."})
    u1 = user("map please")
    first = loom.run("agent", [u1], thread, tools=[widget])
    assert first[-1]["outcome"]["pendingToolCallIds"] == ["call_map"]
    call_message = next(e["parentMessageId"] for e in first if e["type"] == "TOOL_CALL_START")
    assistant = {"id": call_message, "role": "assistant", "toolCalls": [
        {"id": "call_map", "type": "function", "function": {"name": "show_map", "arguments": "{}"}}]}
    events = loom.run("agent", [u1, assistant, user("never mind, just say hi")], thread, tools=[widget])
    assert text_of(events) == "Sure."
    sent = llm_messages(llm, 1)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "user"]
    assert sent[3]["tool_call_id"] == "call_map" and "not run" in sent[3]["content"]
