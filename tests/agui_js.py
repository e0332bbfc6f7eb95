"""Run the official ``@ag-ui/client`` (Node) against an AG-UI endpoint from Python tests.

The harness is ``tests/js/run_agent.mjs``; its dependencies are pinned in ``tests/js/package.json``
(install once with ``npm ci`` in ``tests/js``).

Scenario steps (executed in order on one ``HttpAgent``, i.e. one thread)::

    {"op": "user", "content": "hi", "id": "optional message id"}
        addMessage a user message, then runAgent.
    {"op": "tool_results", "results": {"calc": "42", "*": "default"}, "error": "optional"}
        for every tool call the previous run left pending, addMessage
        {role: "tool", id: "tool-result-<toolCallId>", toolCallId, content} (content chosen by tool
        name, "*" as fallback; non-strings are JSON-encoded; ``error`` is a string or a map by tool
        name), then ONE runAgent.
    {"op": "resume", "decision": "approve" | "reject", "payload": optional}
        runAgent({resume: [{interruptId, status: "resolved" | "cancelled", payload?}]}) answering
        every entry of agent.pendingInterrupts.
    {"op": "run"}
        runAgent with the current messages.

Any step may carry ``tools`` / ``forwardedProps`` to override the scenario-level ones for its run, and
``state`` to replace the client's shared state (``agent.setState``) before it.
A run that fails (``runAgent`` rejects) ends the scenario; later steps are skipped. A step the
harness cannot perform (nothing pending, unknown op) is recorded as a failed run whose error
starts with ``"harness: "``.

Result::

    {"runs": [{
        "op": the step's op,
        "events": [every event the client delivered to subscribers, in order],
        "error": None | "message of the error runAgent threw",
        "outcome": None (no RUN_FINISHED) | "success" | "interrupt" | "cancelled",
        "pendingToolCallIds": [...],       # the client's list; derived from events without RUN_FINISHED
        "pendingInterrupts": [...],        # agent.pendingInterrupts after the run
        "input": the RunAgentInput the client POSTed,
        "http": {"status": 200, "contentType": "text/event-stream"},
        "wireEvents": [the SSE data payloads exactly as the server sent them],
     }],
     "messages": agent.messages at the end,
     "state": agent.state at the end (AG-UI shared state; the scenario's ``state`` is the initial one),
     "warnings": [console.warn lines], "errors": [console.error lines]}

``events`` is what the client accepted (after its compatibility layer, schema enforcement and
chunk expansion); ``wireEvents`` is the raw stream, for checks the client does not make (missing
terminal event, stripped unknown fields, ...). ``input``/``http``/``wireEvents`` are absent when
the run never reached the network.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = "run_agent.mjs"


class AguiClientError(RuntimeError):
    """The harness itself failed (not installed, crashed, timed out, printed no result)."""


def _command() -> list[str]:
    if not (JS_DIR / "node_modules" / "@ag-ui" / "client").is_dir():
        raise AguiClientError(
            f"@ag-ui/client is not installed in {JS_DIR}: run `npm ci` in tests/js"
        )
    node = shutil.which("node")
    if node is None:
        raise AguiClientError("`node` (Node.js 20+) is not on PATH; it is needed to run @ag-ui/client")
    return [node, str(JS_DIR / SCRIPT)]


def _scenario(
    url: str,
    steps: list[dict],
    thread_id: str | None,
    headers: dict | None,
    tools: list[dict] | None,
    forwarded_props: dict | None,
    messages: list[dict] | None,
    state: dict | None = None,
) -> str:
    scenario: dict[str, Any] = {"url": url, "steps": steps}
    if thread_id is not None:
        scenario["threadId"] = thread_id
    if headers is not None:
        scenario["headers"] = headers
    if tools is not None:
        scenario["tools"] = tools
    if forwarded_props is not None:
        scenario["forwardedProps"] = forwarded_props
    if messages is not None:
        scenario["messages"] = messages
    if state is not None:
        scenario["state"] = state
    return json.dumps(scenario)


def _parse(returncode: int, stdout: str, stderr: str) -> dict:
    if returncode != 0:
        raise AguiClientError(f"{SCRIPT} exited with {returncode}:\n{stderr[-4000:]}")
    try:
        return json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise AguiClientError(
            f"{SCRIPT} printed no JSON result ({exc}):\n{stdout[-2000:]}\n--- stderr ---\n{stderr[-4000:]}"
        ) from None


def run_agui_client(
    url: str,
    steps: list[dict],
    *,
    thread_id: str | None = None,
    headers: dict | None = None,
    tools: list[dict] | None = None,
    forwarded_props: dict | None = None,
    messages: list[dict] | None = None,
    state: dict | None = None,
    timeout: float = 60,
) -> dict:
    """Run ``steps`` against ``url`` with ``@ag-ui/client``'s ``HttpAgent``; return the result.

    Blocks. The server must not run on the calling thread's event loop (use a server thread, or
    :func:`arun_agui_client` from async code serving in-process).
    """
    command = _command()
    payload = _scenario(url, steps, thread_id, headers, tools, forwarded_props, messages, state)
    try:
        proc = subprocess.run(
            command, input=payload, capture_output=True, text=True, timeout=timeout, cwd=JS_DIR
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AguiClientError(f"{SCRIPT} timed out after {timeout}s:\n{stderr[-4000:]}") from None
    return _parse(proc.returncode, proc.stdout, proc.stderr)


async def arun_agui_client(url: str, steps: list[dict], **options) -> dict:
    """:func:`run_agui_client` without blocking the event loop (the node process runs from a thread)."""
    return await asyncio.to_thread(run_agui_client, url, steps, **options)


def client_errors(result: dict) -> list[str]:
    """Every run error plus every console.error line; a conforming exchange gives ``[]``."""
    run_errors = [
        f"run {i} ({run['op']}): {run['error']}" for i, run in enumerate(result["runs"]) if run["error"]
    ]
    return run_errors + [f"console.error: {line}" for line in result["errors"]]
