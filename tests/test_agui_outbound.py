"""Golden event sequences for LangGraph stream parts -> AG-UI events (pure; no servers).

Regenerate after an intended change with `LOOM_UPDATE_GOLDEN=1 pytest tests/test_agui_outbound.py` and
review the diff of tests/golden/ — the files are the specification.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ag_ui.core import Event
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from pydantic import TypeAdapter

from loom.adapters.agui.outbound import RunTranslator
from loom.server.runs import encode

GOLDEN = Path(__file__).parent / "golden"
EVENT = TypeAdapter(Event)


def chunk(message_id: str, content="", task="t1", node="call_model", tags=(), **kwargs) -> dict:
    metadata = {"langgraph_node": node, "langgraph_checkpoint_ns": f"{node}:{task}", "tags": list(tags),
                "ls_provider": "openai", "ls_model_name": "m"}
    return {"type": "messages", "ns": (), "data": (AIMessageChunk(content=content, id=message_id, **kwargs), metadata)}


def task_start(name: str, task="t1") -> dict:
    return {"type": "tasks", "ns": (), "data": {"id": task, "name": name, "input": {}, "triggers": []}}


def task_end(name: str, messages=(), task="t1", interrupts=()) -> dict:
    result = {"messages": list(messages)}
    return {"type": "tasks", "ns": (), "data": {"id": task, "name": name, "error": None, "result": result,
                                                 "interrupts": list(interrupts)}}


def call_chunk(index: int, id=None, name=None, args=None) -> dict:
    return {"index": index, "id": id, "name": name, "args": args, "type": "tool_call_chunk"}


def run(parts: list[dict], finish_messages=None) -> list[dict]:
    translator = RunTranslator("thread-1", "run-1")
    events = translator.start()
    for part in parts:
        events += translator.feed(part)
    events += translator.finish(finish_messages)
    # Round-trip through the wire encoding and the protocol's own models: what a client would parse.
    wire = encode(events)
    parsed = [json.loads(line[6:]) for line in wire.splitlines() if line.startswith("data: ")]
    for event in parsed:
        EVENT.validate_python(event)
        assert None not in event.values(), f"null on the wire: {event}"
        event.pop("timestamp")
    return parsed


def check_golden(name: str, events: list[dict]) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("LOOM_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(events, indent=1) + "\n")
    assert events == json.loads(path.read_text())


def check_wire_rules(events: list[dict]) -> None:
    """The sequencing rules of the AG-UI 1.0 client, checked independently of the golden files."""
    assert events[0]["type"] == "RUN_STARTED" and events[0]["protocolVersion"] == "1.0"
    terminal = [e for e in events if e["type"] in ("RUN_FINISHED", "RUN_ERROR")]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    open_text, open_calls, open_steps, open_reasoning = set(), set(), set(), set()
    for e in events:
        kind = e["type"]
        if kind == "TEXT_MESSAGE_START":
            assert not open_calls, "text started while a tool call is open"
            open_text.add(e["messageId"])
        elif kind == "TEXT_MESSAGE_END":
            open_text.remove(e["messageId"])
        elif kind == "TOOL_CALL_START":
            assert not open_text, "tool call started while text is open"
            open_calls.add(e["toolCallId"])
        elif kind == "TOOL_CALL_END":
            open_calls.remove(e["toolCallId"])
        elif kind == "STEP_STARTED":
            assert e["stepName"] not in open_steps
            open_steps.add(e["stepName"])
        elif kind == "STEP_FINISHED":
            open_steps.remove(e["stepName"])
        elif kind == "REASONING_START":
            open_reasoning.add(e["messageId"])
        elif kind == "REASONING_END":
            open_reasoning.remove(e["messageId"])
        elif kind == "RUN_FINISHED":
            assert not (open_text or open_calls or open_steps or open_reasoning)


def test_plain_text_with_usage():
    final = AIMessage("Hello there", id="m1", usage_metadata={"input_tokens": 5, "output_tokens": 2,
                                                                "total_tokens": 7})
    events = run([
        task_start("call_model"),
        chunk("m1", "Hello"), chunk("m1", " there"),
        chunk("m1", usage_metadata={"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}),
        task_end("call_model", [final]),
    ])
    check_wire_rules(events)
    check_golden("plain_text", events)


def test_reasoning_then_text_then_parallel_tool_calls_then_results():
    ai = AIMessage("Let me check.", id="m1", tool_calls=[
        {"id": "c1", "name": "calculator", "args": {"expression": "1+1"}},
        {"id": "c2", "name": "current_time", "args": {"timezone": "UTC"}},
    ])
    events = run([
        task_start("call_model"),
        chunk("m1", additional_kwargs={"reasoning_content": "think"}),
        chunk("m1", "Let me check."),
        chunk("m1", tool_call_chunks=[call_chunk(0, "c1", "calculator", '{"expression": ')]),
        chunk("m1", tool_call_chunks=[call_chunk(0, None, None, '"1+1"}')]),
        chunk("m1", tool_call_chunks=[call_chunk(1, "c2", "current_time", '{"timezone": "UTC"}')]),
        task_end("call_model", [ai]),
        task_start("dispatch_tools", task="t2"),
        task_end("dispatch_tools", [ToolMessage("2", tool_call_id="c1", id="r1"),
                                    ToolMessage("Error: boom", tool_call_id="c2", id="r2", status="error")],
                 task="t2"),
    ])
    check_wire_rules(events)
    check_golden("reasoning_text_tools", events)
    results = [e for e in events if e["type"] == "TOOL_CALL_RESULT"]
    assert [r["messageId"] for r in results] == ["r1", "r2"]  # the ids kept in the checkpoint


def test_atomic_tool_call_and_unstreamed_message_are_still_sent():
    """Providers that return tool calls whole (no arg deltas), and nodes that return messages without an
    LLM stream, must still reach the client (ag-ui-langgraph #2463 and the gate-node case)."""
    streamed = AIMessage("", id="m1", tool_calls=[{"id": "c1", "name": "calculator", "args": {"expression": "3"}}])
    events = run([
        task_start("call_model"),
        chunk("m1", tool_call_chunks=[call_chunk(0, "c1", "calculator", None)]),
        task_end("call_model", [streamed]),
        task_start("gate", task="t2"),
        task_end("gate", [AIMessage("Stopped here.", id="m2")], task="t2"),
    ])
    check_wire_rules(events)
    check_golden("atomic_and_unstreamed", events)


def test_frontend_tool_call_leaves_pending_ids():
    ai = AIMessage("", id="m1", tool_calls=[{"id": "f1", "name": "show_chart", "args": {}}])
    events = run([
        task_start("call_model"),
        chunk("m1", tool_call_chunks=[call_chunk(0, "f1", "show_chart", "{}")]),
        task_end("call_model", [ai]),
    ])
    check_wire_rules(events)
    assert events[-1]["outcome"] == {"type": "success", "pendingToolCallIds": ["f1"]}


def test_interrupt_snapshots_messages_then_finishes_with_interrupt_outcome():
    ai = AIMessage("", id="m1", tool_calls=[{"id": "c1", "name": "delete_records", "args": {"table": "x"}}])
    value = {"interrupts": [{"id": "c1", "reason": "tool_call", "toolCallId": "c1", "message": "Allow?"}]}
    events = run([
        task_start("call_model"),
        chunk("m1", tool_call_chunks=[call_chunk(0, "c1", "delete_records", '{"table": "x"}')]),
        task_end("call_model", [ai]),
        task_start("dispatch_tools", task="t2"),
        task_end("dispatch_tools", [], task="t2", interrupts=[{"id": "lg-1", "value": value}]),
    ], finish_messages=[HumanMessage("delete x", id="u1"), ai])
    check_wire_rules(events)
    check_golden("interrupt", events)


def test_hidden_model_calls_and_custom_events():
    events = run([
        {"type": "custom", "ns": (), "data": {"step": "layer 1", "status": "started"}},
        chunk("p1", "proposal", tags=["nostream"], node="propose"),
        {"type": "custom", "ns": (), "data": {"name": "loom.moa.proposal", "value": {"model": "a"}}},
        {"type": "custom", "ns": (), "data": {"step": "layer 1", "status": "finished"}},
    ])
    check_wire_rules(events)
    assert [e["type"] for e in events] == ["RUN_STARTED", "STEP_STARTED", "CUSTOM", "STEP_FINISHED", "RUN_FINISHED"]


def test_error_is_the_only_terminal_event():
    translator = RunTranslator("t", "r")
    events = translator.start() + translator.feed(task_start("call_model")) + translator.feed(chunk("m1", "par"))
    events += translator.error("The model server closed the stream.", "LLM_BAD_RESPONSE")
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "RUN_ERROR" and "RUN_FINISHED" not in kinds


@pytest.mark.parametrize("steps", [2, 3])
def test_parallel_tasks_of_one_node_share_one_step(steps):
    parts = [task_start("propose", task=f"t{i}") for i in range(steps)]
    parts += [task_end("propose", task=f"t{i}") for i in range(steps)]
    events = run(parts)
    check_wire_rules(events)
    assert [e["type"] for e in events].count("STEP_STARTED") == 1
