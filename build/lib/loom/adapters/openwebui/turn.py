"""One chat turn: the loom runs it takes, and their AG-UI events as OpenWebUI text, blocks and events.

Usually one run. More when the agent calls the chat's OpenWebUI tools: the run ends with those calls pending,
the pipe runs them through `__tools__` (so each tool's user valves apply) and starts the follow-up run with
the results (the Max tool rounds valve bounds how often). Or when the agent asks for approval: the run ends
with an interrupt, the pipe asks the user in OpenWebUI's confirmation dialog and resumes the run with the
answer. Where no dialog can be shown (API callers), the call is declined, and the answer says so.
"""

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import httpx

from .render import (
    Output,
    StatusLine,
    error_text,
    memory_sources,
    moa_status,
    note_text,
    proposals_block,
    reasoning_block,
    send,
    step_status,
    tool_call_block,
)
from .transport import LoomBadEvent, LoomError, run_events

MAX_RESUMES = 20  # approvals in one turn; each waits for a person, this only stops a runaway loop


class Turn:
    def __init__(self, valves, graph: str, run_input: dict, emit, event_call, tools: dict[str, dict]):
        self.valves, self.graph, self.run_input = valves, graph, run_input
        self.emit, self.event_call, self.tools = emit, event_call, tools
        self.history: list[dict] = list(run_input["messages"])  # what the next run of this turn sends
        self.assistant: dict[str, dict] = {}  # this turn's assistant messages in `history`, by id
        self.calls: dict[str, dict] = {}  # tool call id -> {name, arguments, wire}, across the turn's runs
        self.out = Output()
        self.status = StatusLine(emit)
        self.outcome: dict = {}
        self.reasoning: list[str] = []
        self.reasoning_started: float | None = None  # monotonic, while a reasoning message is open
        self.proposals: dict[int, list[dict]] = {}  # MoA answers by layer, until the layer is done
        self.moa_line: str | None = None  # the last MoA layer's tally, for the final status
        self.remembered = 0
        self.tool_count = 0
        self.started = time.monotonic()

    # ---------------------------------------------------------------------------------------------- the turn

    async def stream(self) -> AsyncIterator[str]:
        """The answer's text, streamed; status, sources and notifications go through the event emitter."""
        end = "Stopped"  # what the status says when the user stops generation (the generator is closed)
        try:
            await self.status.show("Connecting to loom…")
            timeout = httpx.Timeout(self.valves.timeout, connect=min(self.valves.timeout, 10.0))
            async with httpx.AsyncClient(timeout=timeout) as client:
                tool_rounds = resumes = 0
                resume: list[dict] | None = None
                while True:
                    async with aclosing(self._run(client, resume)) as run:
                        async for chunk in run:
                            yield chunk
                    resume = None
                    outcome = self.outcome
                    if outcome.get("type") == "interrupt" and resumes < MAX_RESUMES:
                        resumes += 1
                        resume, notes = await self._answer(outcome.get("interrupts") or [])
                        for note in notes:
                            yield self.out.block(note)
                    elif outcome.get("pendingToolCallIds") and tool_rounds < self.valves.max_tool_rounds:
                        tool_rounds += 1
                        for call_id in outcome["pendingToolCallIds"]:
                            if block := await self._run_tool(call_id):
                                yield block
                    elif outcome.get("type") == "interrupt":
                        yield self.out.block(note_text("⚠️", "Stopped", f"The agent asked for approval more than "
                                                                        f"{MAX_RESUMES} times in one answer."))
                        break
                    elif outcome.get("pendingToolCallIds"):
                        yield self.out.block(note_text(
                            "⚠️", "Stopped", f"The agent wanted more than {self.valves.max_tool_rounds} rounds of "
                            "tool calls (the Max tool rounds valve)."))
                        break
                    else:
                        break
            end = self._summary()
        except Exception as exc:  # noqa: BLE001 — every failure ends as a readable answer, never a stack trace
            title = exc.title if isinstance(exc, LoomError) else "The loom pipe failed"
            message = str(exc) if isinstance(exc, LoomError) else f"{type(exc).__name__}: {exc}"
            end = f"Failed: {title}"
            yield self.out.block(error_text(title, message))
            await send(self.emit, {"type": "notification", "data": {"type": "error", "content": f"{title}: {message}"}})
        finally:
            await self.status.done(end)

    async def _run(self, client: httpx.AsyncClient, resume: list[dict] | None) -> AsyncIterator[str]:
        self.outcome = {}
        run_input = {**self.run_input, "runId": str(uuid.uuid4()), "messages": self.history}
        if resume:
            run_input["resume"] = resume
        events = run_events(client, self.valves.loom_url.rstrip("/"), self.valves.api_key, self.graph, run_input,
                            max(0, self.valves.retries), on_retry=lambda line: self.status.show(line, important=True))
        async with aclosing(events):
            async for event in events:
                try:
                    chunks = await self._on_event(event)
                except (KeyError, TypeError, AttributeError) as exc:  # valid JSON, but not the event it claims
                    raise LoomBadEvent(f"loom sent a {event['type']} event the pipe cannot read ({exc!r}): "
                                       f"{json.dumps(event)[:120]}") from None
                for chunk in chunks:
                    if chunk:
                        yield chunk

    def _summary(self) -> str:
        """The last status line, left above the answer: what the turn did, and how long it took."""
        parts = [f"{self.tool_count} tool call{'s' if self.tool_count > 1 else ''}"] if self.tool_count else []
        parts += [self.moa_line] if self.moa_line else []
        parts += [f"remembered {self.remembered}"] if self.remembered else []
        return " · ".join([*(parts or ["Done"]), f"{time.monotonic() - self.started:.1f} s"])

    # -------------------------------------------------------------------------------------------- events

    def _message(self, message_id: str) -> dict:
        """This turn's assistant message `message_id`, added to the history the follow-up run sends."""
        if message_id not in self.assistant:
            self.assistant[message_id] = {"id": message_id, "role": "assistant"}
            self.history.append(self.assistant[message_id])
        return self.assistant[message_id]

    async def _on_event(self, event: dict) -> list[str]:
        kind = event["type"]
        if kind == "TEXT_MESSAGE_START":
            self._message(event["messageId"])
            self.out.paragraph = True
            if event.get("name"):  # a multi-agent graph names the sub-agent speaking
                await self.status.show(f"{event['name']} is answering…", important=True)
        elif kind == "TEXT_MESSAGE_CONTENT":
            message = self._message(event["messageId"])
            message["content"] = message.get("content", "") + event["delta"]
            return [self.out.text(event["delta"])]
        elif kind == "REASONING_START":
            self.reasoning, self.reasoning_started = [], time.monotonic()
            await self.status.show("Thinking…")
        elif kind == "REASONING_MESSAGE_CONTENT":
            self.reasoning.append(event.get("delta", ""))
        elif kind == "REASONING_END":
            text, self.reasoning = "".join(self.reasoning), []
            started, self.reasoning_started = self.reasoning_started, None
            seconds = 0.0 if started is None else time.monotonic() - started  # no START: not the uptime
            if self.valves.show_reasoning and text.strip():
                return [self.out.block(reasoning_block(text, seconds))]
        elif kind == "TOOL_CALL_START":
            call_id, name = event["toolCallId"], event.get("toolCallName", "")
            wire = {"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            self._message(event.get("parentMessageId") or f"{call_id}-message").setdefault("toolCalls", []).append(wire)
            self.calls[call_id] = {"name": name, "arguments": "", "wire": wire}
            await self.status.show(f"Calling {name}…")
        elif kind == "TOOL_CALL_ARGS" and event["toolCallId"] in self.calls:
            call = self.calls[event["toolCallId"]]
            call["arguments"] += event["delta"]
            call["wire"]["function"]["arguments"] = call["arguments"]
        elif kind == "TOOL_CALL_RESULT":
            call_id, content = event["toolCallId"], str(event.get("content", ""))
            self.history.append({"id": event.get("messageId") or f"{call_id}-result", "role": "tool",
                                 "toolCallId": call_id, "content": content})
            return [self._tool_block(call_id, content)]
        elif kind == "STEP_STARTED":
            await self.status.show(step_status(str(event.get("stepName", ""))))
        elif kind == "CUSTOM":
            return await self._on_custom(str(event.get("name", "")), event.get("value"))
        elif kind == "MESSAGES_SNAPSHOT":
            # The thread as loom stores it (sent before an interrupt and when a run resumes one): the next run
            # of this turn sends it back, so loom matches every message by id.
            self.history = [m for m in event.get("messages") or [] if m.get("role") in
                            ("system", "user", "assistant", "tool")]
            self.assistant = {m["id"]: m for m in self.history if m.get("role") == "assistant"}
        elif kind == "RUN_FINISHED":
            self.outcome = event.get("outcome") or {"type": "success"}
        return []

    async def _on_custom(self, name: str, value) -> list[str]:
        value = value if isinstance(value, dict) else {}
        if name.startswith("loom.moa."):
            line, important = moa_status(name, value)
            await self.status.show(line, important)
            layer = value.get("layer", 0)
            if name == "loom.moa.proposer" and value.get("status") == "finished":
                self.proposals.setdefault(layer, []).append(value)
            elif name == "loom.moa.layer":
                self.moa_line = f"MoA: {value.get('succeeded', 0)} of {value.get('proposers', 0)} proposers answered"
                answers = self.proposals.pop(layer, [])
                if self.valves.show_moa_proposals and answers:
                    return [self.out.block(proposals_block(layer, answers))]
        elif name == "loom.memory.recalled":
            memories = [m for m in value.get("memories") or [] if isinstance(m, dict)]
            for source in memory_sources(memories):
                await send(self.emit, source)
            await self.status.show(f"Recalled {len(memories)} memories" if memories else "No memories recalled")
        elif name == "loom.memory.saved":
            saved = [str(m.get("content", "")) for m in value.get("memories") or [] if isinstance(m, dict)]
            if saved:
                self.remembered += len(saved)
                await self.status.show("Remembered: " + "; ".join(saved), important=True)
        elif name == "letta.stop_reason":
            await self.status.show(str(value.get("message") or value.get("stopReason") or "Letta stopped early."),
                                   important=True)
        return []

    def _tool_block(self, call_id: str, result: str) -> str:
        self.tool_count += 1
        if not self.valves.show_tool_calls:
            return ""
        call = self.calls.get(call_id) or {"name": "tool", "arguments": "{}"}
        return self.out.block(tool_call_block(call_id, call["name"], call["arguments"], result))

    # ------------------------------------------------------------------------------- OpenWebUI's tools

    async def _run_tool(self, call_id: str) -> str:
        """Run a pending call with the chat's OpenWebUI tool; its result goes into the follow-up run."""
        call = self.calls.get(call_id) or {"name": "", "arguments": "{}"}
        name, tool = call["name"], self.tools.get(call["name"])
        await self.status.show(f"Running {name}…", important=True)
        if tool is None:
            result = f"Error: this chat has no tool named {name!r}."
        else:
            try:
                arguments = json.loads(call["arguments"] or "{}")
                if not isinstance(arguments, dict):
                    raise ValueError("the arguments are not a JSON object")
                value = tool["callable"](**arguments)
                if inspect.isawaitable(value):
                    value = await asyncio.wait_for(value, self.valves.timeout)
                result = _as_text(value)
            except TimeoutError:
                result = f"Error: {name} did not finish within {self.valves.timeout:g} s."
            except Exception as exc:  # noqa: BLE001 — a failing tool is information for the agent
                result = f"Error: {type(exc).__name__}: {exc}"
        message = {"id": f"owui-result-{call_id}", "role": "tool", "toolCallId": call_id, "content": result}
        if result.startswith("Error:"):
            message["error"] = result
        self.history.append(message)
        return self._tool_block(call_id, result)

    # ------------------------------------------------------------------------------------- approvals

    async def _answer(self, interrupts: list[dict]) -> tuple[list[dict], list[str]]:
        """`resume[]` answering every interrupt of the run, and notes on those the user could not be asked."""
        resume, notes = [], []
        for item in interrupts:
            message = str(item.get("message") or "The agent is waiting for an answer.")
            if item.get("reason") == "tool_call" or item.get("toolCallId"):
                name = (self.calls.get(item.get("toolCallId", "")) or {}).get("name") or "a tool"
                request = {"type": "confirmation", "data": {"title": f"Allow {name}?", "message": message}}
            else:
                request = {"type": "input", "data": {"title": "The agent asks", "message": message,
                                                     "placeholder": ""}}
            answer, why_not = await self._ask(request)
            if why_not is not None:
                notes.append(note_text("⏸", "Needs approval", f"{message} — {why_not}, so it was declined."))
                resume.append({"interruptId": item["id"], "status": "cancelled",
                               "payload": {"approved": False, "reason": f"The user could not be asked: {why_not}."}})
            elif request["type"] == "confirmation":
                resume.append({"interruptId": item["id"], "status": "resolved",
                               "payload": {"approved": answer is True}})
            elif isinstance(answer, str):
                resume.append({"interruptId": item["id"], "status": "resolved", "payload": answer})
            else:
                resume.append({"interruptId": item["id"], "status": "cancelled"})
        return resume, notes

    async def _ask(self, request: dict) -> tuple[object, str | None]:
        """(answer, None), or (None, why the user could not be asked)."""
        if self.event_call is None:
            return None, "this client cannot show OpenWebUI's confirmation dialog"
        await self.status.show("Waiting for your answer…", important=True)
        try:
            answer = await asyncio.wait_for(self.event_call(request), self.valves.confirmation_timeout)
        except TimeoutError:
            return None, f"no answer came within {self.valves.confirmation_timeout:g} s"
        except Exception as exc:  # noqa: BLE001
            return None, f"the dialog failed ({exc})"
        if isinstance(answer, dict) and "error" in answer:  # API callers: 'Client session disconnected.'
            return None, "this client cannot show OpenWebUI's confirmation dialog"
        return answer, None


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (dict, list, tuple, int, float, bool)) or value is None:
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
