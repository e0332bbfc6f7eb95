"""The official AG-UI client (@ag-ui/client 1.0, npm) and validator (ag-ui-validate, PyPI) against loom."""

from __future__ import annotations

import asyncio
import json

from ag_ui_validate.transport import TransportOptions, validate_body, validate_endpoint

from tests.agui_js import client_errors, run_agui_client
from tests.conftest import new_id

WEATHER = {"name": "show_weather", "description": "Show the weather widget for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def tool_call(name: str, args: dict) -> dict:
    return {"id": f"call_{new_id()[:8]}", "name": name, "arguments": args}


def roles(messages: list[dict]) -> list[str]:
    return [m["role"] for m in messages]


def validator_findings(wire_events: list[dict]) -> list:
    """ag-ui-validate's errors and warnings for a recorded run (the very stream the client received)."""

    async def body():
        for event in wire_events:
            yield f"data: {json.dumps(event)}\n\n".encode()

    result = asyncio.run(validate_body(body(), "text/event-stream", TransportOptions(recorded=True)))
    return [d for d in result.report.diagnostics if d.severity in ("error", "warning")]


def assert_clean(result: dict) -> None:
    """Zero client errors, zero validator findings, and the wire rules neither of them checks."""
    assert client_errors(result) == [], client_errors(result)
    for run in result["runs"]:
        assert validator_findings(run["wireEvents"]) == []
        wire = run["wireEvents"]
        assert wire[0]["type"] == "RUN_STARTED" and wire[0]["protocolVersion"] == "1.0"
        assert [e["type"] for e in wire].count("RUN_FINISHED") == 1 and wire[-1]["type"] == "RUN_FINISHED"
        assert all(None not in e.values() for e in wire)
        assert not any(e["type"] == "RAW" or "rawEvent" in e for e in wire)
    ids = [m["id"] for m in result["messages"]]
    assert len(ids) == len(set(ids)), "duplicated messages in the client's history"


def test_plain_turn_and_second_turn(loom, llm):
    llm.script({"text": "Hello!"}, {"text": "Again."})
    result = run_agui_client(f"{loom.url}/agents/agent", [{"op": "user", "content": "hi"},
                                                          {"op": "user", "content": "and again"}])
    assert_clean(result)
    assert roles(result["messages"]) == ["user", "assistant", "user", "assistant"]
    assert [m.get("content") for m in result["messages"]][1::2] == ["Hello!", "Again."]


def test_backend_tool_result_lands_after_its_call(loom, llm):
    llm.script({"tool_calls": [tool_call("calculator", {"expression": "2*21"})]}, {"text": "42."}, {"text": "Yes."})
    result = run_agui_client(f"{loom.url}/agents/agent", [{"op": "user", "content": "2*21?"},
                                                          {"op": "user", "content": "sure?"}])
    assert_clean(result)
    assert roles(result["messages"]) == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert result["messages"][2]["content"] == "42"
    # The client re-sent the tool message under the id loom streamed: the thread matched it, no duplicates.
    assert [m["role"] for m in llm.requests()[2]["body"]["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "user"]


def test_frontend_tool_round_trip(loom, llm):
    call = tool_call("show_weather", {"city": "Oslo"})
    llm.script({"tool_calls": [call]}, {"text": "Here is Oslo's weather."})
    result = run_agui_client(f"{loom.url}/agents/agent", [
        {"op": "user", "content": "weather in Oslo"},
        {"op": "tool_results", "results": {"show_weather": "rendered: 4°C, rain"}},
    ], tools=[WEATHER])
    assert_clean(result)
    first, second = result["runs"]
    assert first["pendingToolCallIds"] == [call["id"]]
    assert not any(e["type"] == "TOOL_CALL_RESULT" for e in first["wireEvents"])  # the client runs it
    assert not any(e["type"] == "TOOL_CALL_START" for e in second["wireEvents"])  # not re-emitted
    assert llm.requests()[0]["body"]["tools"][-1]["function"]["name"] == "show_weather"
    tool_message = llm.requests()[1]["body"]["messages"][-1]
    assert tool_message == {"role": "tool", "tool_call_id": call["id"], "content": "rendered: 4°C, rain"}
    assert roles(result["messages"]) == ["user", "assistant", "tool", "assistant"]


def test_a_frontend_tool_shadows_the_backend_tool_of_the_same_name(loom, llm):
    own_calculator = {"name": "calculator", "description": "The page's calculator.", "parameters": {}}
    llm.script({"tool_calls": [tool_call("calculator", {"expression": "1+1"})]})
    result = run_agui_client(f"{loom.url}/agents/agent", [{"op": "user", "content": "1+1"}], tools=[own_calculator])
    assert_clean(result)
    names = [t["function"]["name"] for t in llm.requests()[0]["body"]["tools"]]
    assert names.count("calculator") == 1 and names[-1] == "calculator"
    assert result["runs"][0]["pendingToolCallIds"]  # the client runs it, not the server


def test_turn_mixing_backend_and_frontend_calls(loom, llm):
    backend, frontend = tool_call("calculator", {"expression": "3*3"}), tool_call("show_weather", {"city": "Rome"})
    llm.script({"tool_calls": [backend, frontend]}, {"text": "9, and the widget is shown."})
    result = run_agui_client(f"{loom.url}/agents/agent", [
        {"op": "user", "content": "3*3 and Rome weather"},
        {"op": "tool_results", "results": {"*": "shown"}},
    ], tools=[WEATHER])
    assert_clean(result)
    first = result["runs"][0]
    assert [e["content"] for e in first["wireEvents"] if e["type"] == "TOOL_CALL_RESULT"] == ["9"]
    assert first["pendingToolCallIds"] == [frontend["id"]]
    sent = llm.requests()[1]["body"]["messages"]
    assert [(m["role"], m.get("content")) for m in sent[-2:]] == [("tool", "9"), ("tool", "shown")]
    assert result["messages"][-1]["content"] == "9, and the widget is shown."


def test_confirmation_interrupt_approved(loom, llm):
    call = tool_call("delete_records", {"table": "sessions"})
    llm.script({"tool_calls": [call]}, {"text": "Deleted."})
    result = run_agui_client(f"{loom.url}/agents/agent", [
        {"op": "user", "content": "clear the sessions table"},
        {"op": "resume", "decision": "approve"},
    ])
    assert_clean(result)
    interrupted, resumed = result["runs"]
    assert interrupted["outcome"] == "interrupt"
    [pending] = interrupted["pendingInterrupts"]
    assert (pending["reason"], pending["toolCallId"]) == ("tool_call", call["id"])
    kinds = [e["type"] for e in interrupted["wireEvents"]]
    assert kinds.index("MESSAGES_SNAPSHOT") < kinds.index("RUN_FINISHED")
    assert [e["type"] for e in resumed["wireEvents"] if e["type"].startswith("TOOL_CALL")] == ["TOOL_CALL_RESULT"]
    assert "deleted all records of sessions" in json.dumps(resumed["wireEvents"])
    assert result["messages"][-1]["content"] == "Deleted."


def test_confirmation_interrupt_rejected_tells_the_model(loom, llm):
    call = tool_call("calculator", {"expression": "1+1"})
    llm.script({"tool_calls": [call]}, {"text": "Understood, I did not run it."})
    result = run_agui_client(f"{loom.url}/agents/agent", [
        {"op": "user", "content": "add"},
        {"op": "resume", "decision": "reject", "payload": {"approved": False, "reason": "not now"}},
    ], forwarded_props={"context": {"confirm_tools": ["calculator"]}})
    assert_clean(result)
    told = llm.requests()[1]["body"]["messages"][-1]
    assert told["role"] == "tool" and "rejected" in told["content"] and "not now" in told["content"]


def test_new_input_on_an_interrupted_thread_is_a_run_error(loom, llm):
    llm.script({"tool_calls": [tool_call("delete_records", {"table": "t"})]})
    thread = new_id()
    u1 = {"id": new_id(), "role": "user", "content": "delete"}
    loom.run("agent", [u1], thread)
    events = loom.run("agent", [u1, {"id": new_id(), "role": "user", "content": "something else"}], thread)
    assert [e["type"] for e in events] == ["RUN_STARTED", "RUN_ERROR"]
    assert events[-1]["code"] == "INTERRUPT_PENDING"
    stale = loom.run("agent", [u1], thread, resume=[{"interruptId": "nope", "status": "resolved"}])
    assert stale[-1]["code"] in ("INCOMPLETE_RESUME", "STALE_RESUME")


def test_ag_ui_validate_reports_no_errors(loom, llm):
    frontend = tool_call("show_weather", {"city": "Oslo"})
    confirm = tool_call("delete_records", {"table": "x"})
    llm.script({"reasoning": "hmm", "text": "Hi."},
               {"tool_calls": [tool_call("calculator", {"expression": "1+2"})]}, {"text": "3"},
               {"tool_calls": [frontend]},
               {"tool_calls": [confirm]})

    def body(text, **extra):
        return {"threadId": new_id(), "runId": new_id(), "messages": [{"id": new_id(), "role": "user",
                                                                       "content": text}], **extra}

    async def validate_all():
        inputs = [body("hello"), body("1+2"), body("weather", tools=[WEATHER]), body("delete x")]
        return [await validate_endpoint(f"{loom.url}/agents/agent", TransportOptions(input=i, timeout_ms=30000))
                for i in inputs]

    for result in asyncio.run(validate_all()):
        errors = [d for d in result.report.diagnostics if d.severity in ("error", "warning")]
        assert result.status == 200 and errors == [], errors
