"""The @ag-ui/client harness (tests/agui_js.py) reports what it should.

A throwaway SSE server plays canned AG-UI streams: ``POST /agents/{scenario}`` answers the n-th
request on that path with the n-th stream of the scenario, built from the request body (so
threadId/runId are echoed as a real server would). Bodies are recorded for assertions on what the
official client sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests import agui_js
from tests.agui_js import client_errors, run_agui_client

TOOLS = [
    {
        "name": "calc",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}, "required": ["expr"]},
    }
]

Stream = Callable[[dict], list[dict]]


# --- canned streams ------------------------------------------------------------------------


def started(body: dict) -> dict:
    return {
        "type": "RUN_STARTED",
        "threadId": body["threadId"],
        "runId": body["runId"],
        "protocolVersion": "1.0",
    }


def finished(body: dict, **extra) -> dict:
    return {"type": "RUN_FINISHED", "threadId": body["threadId"], "runId": body["runId"], **extra}


def text(message_id: str, content: str) -> list[dict]:
    return [
        {"type": "TEXT_MESSAGE_START", "messageId": message_id, "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": message_id, "delta": content},
        {"type": "TEXT_MESSAGE_END", "messageId": message_id},
    ]


def tool_call(tool_call_id: str, name: str, args: dict, parent: str) -> list[dict]:
    return [
        {
            "type": "TOOL_CALL_START",
            "toolCallId": tool_call_id,
            "toolCallName": name,
            "parentMessageId": parent,
        },
        {"type": "TOOL_CALL_ARGS", "toolCallId": tool_call_id, "delta": json.dumps(args)},
        {"type": "TOOL_CALL_END", "toolCallId": tool_call_id},
    ]


SCENARIOS: dict[str, list[Stream]] = {
    "plain": [lambda b: [started(b), *text("a1", "Hello world"), finished(b)]],
    "frontend_tool": [
        lambda b: [
            started(b),
            *tool_call("tc1", "calc", {"expr": "6*7"}, parent="a1"),
            finished(b, outcome={"type": "success", "pendingToolCallIds": ["tc1"]}),
        ],
        lambda b: [started(b), *text("a2", "It is 42."), finished(b, outcome={"type": "success"})],
    ],
    # The same without an outcome: the client derives the pending call from the stream.
    "frontend_tool_derived": [
        lambda b: [started(b), *tool_call("tc1", "calc", {"expr": "6*7"}, parent="a1"), finished(b)],
        lambda b: [started(b), *text("a2", "It is 42."), finished(b)],
    ],
    "interrupt": [
        lambda b: [
            started(b),
            *tool_call("tc9", "delete_file", {"path": "/tmp/x"}, parent="a1"),
            finished(
                b,
                outcome={
                    "type": "interrupt",
                    "interrupts": [{"id": "int-1", "reason": "tool_call", "toolCallId": "tc9"}],
                },
            ),
        ],
        lambda b: [
            started(b),
            {"type": "TOOL_CALL_RESULT", "messageId": "r9", "toolCallId": "tc9", "content": "done"},
            *text("a2", "Done."),
            finished(b),
        ],
    ],
    # Fatal for a 1.0 client: a null where the schema wants a string.
    "null_message_id": [
        lambda b: [
            started(b),
            {"type": "TEXT_MESSAGE_START", "messageId": None, "role": "assistant"},
            finished(b),
        ]
    ],
    # Fatal: the run ends while a text message is still open.
    "finished_while_open": [
        lambda b: [
            started(b),
            {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "Hel"},
            finished(b),
        ]
    ],
    # Fatal: content must be preceded by RUN_STARTED.
    "no_run_started": [lambda b: [*text("a1", "Hi"), finished(b)]],
    # Not enforced by the client: the stream just stops. The harness must still expose it.
    "no_terminal": [lambda b: [started(b), *text("a1", "Hi")]],
    # Unknown field: stripped with a console.warn, not fatal.
    "unknown_field": [
        lambda b: [
            started(b),
            {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant", "sparkle": True},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "Hi"},
            {"type": "TEXT_MESSAGE_END", "messageId": "a1"},
            finished(b),
        ]
    ],
    "http_500": [],
}


# --- fake server ---------------------------------------------------------------------------


class FakeAgui:
    def __init__(self) -> None:
        self.bodies: dict[str, list[dict]] = defaultdict(list)
        self.headers: dict[str, list[dict]] = defaultdict(list)
        self.base = ""  # http://127.0.0.1:PORT/agents, set once the server listens
        self.app = Starlette(routes=[Route("/agents/{scenario}", self.handle, methods=["POST"])])

    async def handle(self, request: Request):
        scenario = request.path_params["scenario"]
        body = await request.json()
        self.bodies[scenario].append(body)
        self.headers[scenario].append(dict(request.headers))
        streams = SCENARIOS.get(scenario, [])
        index = len(self.bodies[scenario]) - 1
        if index >= len(streams):
            return JSONResponse({"error": f"no stream #{index} for {scenario}"}, status_code=500)
        events = streams[index](body)

        async def sse():
            for event in events:
                yield f"data: {json.dumps(event)}\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def fake():
    server_state = FakeAgui()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(server_state.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake AG-UI server did not start"
        time.sleep(0.01)
    server_state.base = f"http://127.0.0.1:{port}/agents"
    yield server_state
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def run(fake: FakeAgui, scenario: str, steps: list[dict], **kwargs) -> dict:
    fake.bodies.pop(scenario, None)
    fake.headers.pop(scenario, None)
    return run_agui_client(f"{fake.base}/{scenario}", steps, **kwargs)


# --- tests ---------------------------------------------------------------------------------


def test_plain_text_run_is_clean(fake):
    result = run(
        fake,
        "plain",
        [{"op": "user", "content": "hi", "id": "u1"}],
        thread_id="t1",
        headers={"Authorization": "Bearer test"},
        forwarded_props={"node_name": "x"},
        messages=[{"id": "s1", "role": "system", "content": "Be brief."}],
    )

    assert client_errors(result) == []
    # A correct 1.0 stream makes the client print nothing at all.
    assert result["warnings"] == []
    [run0] = result["runs"]
    assert [e["type"] for e in run0["events"]] == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert run0["outcome"] == "success"
    assert run0["pendingToolCallIds"] == [] and run0["pendingInterrupts"] == []
    assert [e["type"] for e in run0["wireEvents"]] == [e["type"] for e in run0["events"]]
    assert run0["http"] == {"status": 200, "contentType": "text/event-stream; charset=utf-8"}
    assert [(m["id"], m["role"], m["content"]) for m in result["messages"]] == [
        ("s1", "system", "Be brief."),
        ("u1", "user", "hi"),
        ("a1", "assistant", "Hello world"),
    ]
    [body] = fake.bodies["plain"]
    assert body["threadId"] == "t1" and body["protocolVersion"] == "1.0"
    assert body["forwardedProps"] == {"node_name": "x"} and body["tools"] == []
    assert [m["id"] for m in body["messages"]] == ["s1", "u1"]
    assert fake.headers["plain"][0]["authorization"] == "Bearer test"
    assert run0["input"] == body


@pytest.mark.parametrize("scenario", ["frontend_tool", "frontend_tool_derived"])
def test_frontend_tool_results_are_sent_on_the_next_run(fake, scenario):
    steps = [{"op": "user", "content": "what is 6*7?"}, {"op": "tool_results", "results": {"calc": "42"}}]
    result = run(fake, scenario, steps, tools=TOOLS)

    assert client_errors(result) == []
    first, second = result["runs"]
    assert first["pendingToolCallIds"] == ["tc1"]
    assert second["pendingToolCallIds"] == []

    bodies = fake.bodies[scenario]
    assert len(bodies) == 2
    assert [t["name"] for t in bodies[0]["tools"]] == ["calc"] == [t["name"] for t in bodies[1]["tools"]]
    roles = [m["role"] for m in bodies[1]["messages"]]
    assert roles == ["user", "assistant", "tool"]
    assistant, tool = bodies[1]["messages"][1:]
    assert assistant["id"] == "a1"
    [call] = assistant["toolCalls"]
    assert (call["id"], call["function"]["name"]) == ("tc1", "calc")
    assert json.loads(call["function"]["arguments"]) == {"expr": "6*7"}
    assert tool == {"id": "tool-result-tc1", "role": "tool", "toolCallId": "tc1", "content": "42"}
    assert result["messages"][-1]["content"] == "It is 42."


@pytest.mark.parametrize(
    ("decision", "payload", "expected"),
    [
        ("approve", None, {"interruptId": "int-1", "status": "resolved"}),
        ("reject", {"why": "no"}, {"interruptId": "int-1", "status": "cancelled", "payload": {"why": "no"}}),
    ],
)
def test_interrupt_is_answered_with_resume(fake, decision, payload, expected):
    resume = {"op": "resume", "decision": decision, **({"payload": payload} if payload is not None else {})}
    result = run(fake, "interrupt", [{"op": "user", "content": "delete /tmp/x"}, resume])

    assert client_errors(result) == []
    first, second = result["runs"]
    assert first["outcome"] == "interrupt"
    assert first["pendingInterrupts"] == [{"id": "int-1", "reason": "tool_call", "toolCallId": "tc9"}]
    assert second["outcome"] == "success" and second["pendingInterrupts"] == []

    bodies = fake.bodies["interrupt"]
    assert "resume" not in bodies[0]
    assert bodies[1]["resume"] == [expected]
    assert bodies[1]["threadId"] == bodies[0]["threadId"]


@pytest.mark.parametrize("scenario", ["null_message_id", "finished_while_open", "no_run_started"])
def test_broken_stream_fails_the_run_and_stops_the_scenario(fake, scenario):
    result = run(fake, scenario, [{"op": "user", "content": "hi"}, {"op": "user", "content": "again"}])

    [run0] = result["runs"]  # the second step was skipped
    assert run0["error"]
    assert client_errors(result)
    assert len(fake.bodies[scenario]) == 1
    # The raw stream is still available to explain the failure.
    assert run0["wireEvents"][-1]["type"] == "RUN_FINISHED"


def test_missing_terminal_event_is_visible_though_not_a_client_error(fake):
    result = run(fake, "no_terminal", [{"op": "user", "content": "hi"}])

    [run0] = result["runs"]
    assert run0["error"] is None  # the 1.0 client does not enforce a terminal event ...
    assert run0["outcome"] is None  # ... so tests must check for it themselves
    assert run0["wireEvents"][-1]["type"] == "TEXT_MESSAGE_END"


def test_stripped_unknown_field_shows_up_as_a_warning(fake):
    result = run(fake, "unknown_field", [{"op": "user", "content": "hi"}])

    assert client_errors(result) == []
    assert any("sparkle" in line for line in result["warnings"]), result["warnings"]
    [run0] = result["runs"]
    assert "sparkle" not in run0["events"][1] and run0["wireEvents"][1]["sparkle"] is True


def test_http_error_and_impossible_steps_are_reported(fake):
    result = run(fake, "http_500", [{"op": "user", "content": "hi"}])
    [run0] = result["runs"]
    assert run0["error"].startswith("HTTP 500")
    assert run0["http"]["status"] == 500

    steps = [{"op": "user", "content": "hi"}, {"op": "tool_results", "results": {"*": "x"}}]
    result = run(fake, "plain", steps)
    assert [r["error"] for r in result["runs"]] == [
        None,
        "harness: tool_results step, but the previous run left no pending tool calls",
    ]
    assert len(client_errors(result)) == 1


def test_missing_node_modules_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(agui_js, "JS_DIR", tmp_path)
    with pytest.raises(agui_js.AguiClientError, match="run `npm ci` in tests/js"):
        run_agui_client("http://127.0.0.1:9/agents/x", [])


async def test_async_variant_does_not_block_the_loop(fake):
    # For tests that serve the app on their own event loop: the blocking variant would deadlock.
    fake.bodies.pop("plain", None)
    result = await agui_js.arun_agui_client(f"{fake.base}/plain", [{"op": "user", "content": "hi"}])
    assert client_errors(result) == []
    assert result["messages"][-1]["content"] == "Hello world"
