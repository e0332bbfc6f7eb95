"""LangGraph stream parts -> AG-UI 1.0 events.

`RunTranslator` is fed the parts of `graph.astream(..., stream_mode=["messages", "tasks", "custom"],
version="v2")` and returns events. It holds the wire rules in one place: RUN_STARTED first with
`protocolVersion`, exactly one terminal event, every text message / reasoning span / tool call / step closed
before RUN_FINISHED, text closed before a tool call starts, optional fields omitted (the ag-ui models never
write null), no RAW events, TOOL_CALL_RESULT.messageId equal to the tool message id kept in the checkpoint.
It does no I/O, so it is tested with golden event sequences.

Conventions for graphs:
- a model call tagged `nostream` (langgraph.constants.TAG_NOSTREAM) is not streamed (MoA proposers);
- `get_stream_writer()({"name": ..., "value": ...})` becomes a CUSTOM event; `{"step": name, "status":
  "started"|"finished"}` becomes STEP_STARTED/STEP_FINISHED; `{"usage": usage_metadata, "model": ...}` adds a
  hidden call's tokens to RUN_FINISHED.usage without an event; `{"keepalive": True}` asks for an SSE comment
  (`keepalive_due`) so proxies keep a quiet stream open, without an event a client has to understand.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ag_ui.core.token_usage import aggregate_token_usage, token_usage_from_langchain_metadata
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage

from loom.adapters.agui.interrupts import agui_interrupts
from loom.adapters.agui.messages import reasoning_id, text_of, to_agui

PROTOCOL_VERSION = "1.0"


Event = dict[str, Any]  # wire form: camelCase keys, no None values (checked against ag-ui models in tests)


def _event(kind: str, **fields: Any) -> Event:
    """One AG-UI event in wire form. Plain dicts, not ag-ui pydantic models: building and dumping a model per
    token was the largest share of loom's own per-token CPU (bench/serving.py)."""
    event = {"type": kind, "timestamp": int(time.time() * 1000)}
    event.update((k, v) for k, v in fields.items() if v is not None)
    return event


@dataclass
class _Call:
    id: str
    open: bool = True
    args_sent: bool = False


@dataclass
class _Stream:
    """What is open for one assistant message being streamed."""

    message_id: str
    text_open: bool = False
    text_done: bool = False
    reasoning_open: bool = False
    calls: dict[int, _Call] = field(default_factory=dict)
    agent: str | None = None  # the sub-agent speaking, in a multi-agent graph


class RunTranslator:
    def __init__(self, thread_id: str, run_id: str):
        self.thread_id = thread_id
        self.run_id = run_id
        self._streams: dict[str, _Stream] = {}  # assistant message id -> open state
        self._task_streams: dict[str, set[str]] = {}  # task id -> message ids it streamed
        self._steps: Counter[str] = Counter()
        self._task_names: dict[str, str] = {}
        self._streamed: set[str] = set()  # assistant message ids already on the wire
        self._calls_started: dict[str, _Call] = {}
        self._results: set[str] = set()
        self._result_messages: set[str] = set()  # tool message ids already sent (subgraph and parent both write)
        self._usage: list = []
        self._usage_seen: set[str] = set()
        self.interrupts: list[Any] = []
        self.finished = False
        self.keepalive_due = False

    def known(self, message_ids: set[str]) -> None:
        """Messages the thread already holds: a node that returns the whole history (a supervisor's agent)
        writes them again, and they must not reach the client twice."""
        self._streamed |= message_ids
        self._result_messages |= message_ids

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> list[Event]:
        return [_event("RUN_STARTED", threadId=self.thread_id, runId=self.run_id, protocolVersion=PROTOCOL_VERSION)]

    def snapshot(self, messages: list[BaseMessage]) -> Event:
        return _event("MESSAGES_SNAPSHOT", messages=to_agui(messages))

    def feed(self, part: dict) -> list[Event]:
        kind = part["type"]
        if kind == "messages":
            message, metadata = part["data"]
            if isinstance(message, AIMessageChunk):
                return self._on_chunk(message, metadata)
            return []
        if kind == "tasks":
            data = part["data"]
            if part.get("ns"):  # a node of a subgraph: its outputs, without a step of its own
                return self._on_subgraph_result(data) if "result" in data else []
            return self._on_task_result(data) if "result" in data or "error" in data else self._on_task_start(data)
        if kind == "custom":
            return self._on_custom(part["data"])
        return []

    def finish(self, messages: list[BaseMessage] | None = None) -> list[Event]:
        """Close everything and end the run; `messages` (the thread after an interrupt) is snapshotted first."""
        events = self._close_all()
        outcome: dict[str, Any]
        if self.interrupts:
            if messages is not None:
                events.append(self.snapshot(messages))
            outcome = {"type": "interrupt", "interrupts": agui_interrupts(self.interrupts)}
        else:
            outcome = {"type": "success"}
            if pending := self.pending_tool_calls:
                outcome["pendingToolCallIds"] = pending
        events.append(_event("RUN_FINISHED", threadId=self.thread_id, runId=self.run_id, outcome=outcome,
                             usage=self._usage_summary()))
        self.finished = True
        return events

    def error(self, message: str, code: str) -> list[Event]:
        """RUN_ERROR is legal with messages still open; it is the only terminal event of a failed run."""
        self.finished = True
        return [_event("RUN_ERROR", message=message, code=code, usage=self._usage_summary())]

    def _usage_summary(self) -> list[dict] | None:
        """One entry per (provider, model), for RUN_FINISHED / RUN_ERROR."""
        if not self._usage:
            return None
        return [u.model_dump(by_alias=True, exclude_none=True) for u in aggregate_token_usage(self._usage)] or None

    @property
    def pending_tool_calls(self) -> list[str]:
        return [call_id for call_id in self._calls_started if call_id not in self._results]

    # ------------------------------------------------------------------------------------------- messages

    def _on_chunk(self, chunk: AIMessageChunk, metadata: dict) -> list[Event]:
        if "nostream" in (metadata.get("tags") or ()):
            return []
        message_id = chunk.id
        events: list[Event] = []
        stream = self._streams.get(message_id)
        if stream is None:
            if message_id in self._streamed:
                return []  # a late chunk of a message already closed
            stream = self._streams[message_id] = _Stream(message_id)
            self._streamed.add(message_id)
            # The top-level task (a subgraph's messages carry "node:task|inner:task"): its result closes them.
            namespace = (metadata.get("langgraph_checkpoint_ns") or "").split("|")
            self._task_streams.setdefault(namespace[0].rpartition(":")[2], set()).add(message_id)
            stream.agent = metadata.get("lc_agent_name") or (namespace[0].partition(":")[0]
                                                              if len(namespace) > 1 else None)

        reasoning = chunk.additional_kwargs.get("reasoning_content")
        text = chunk.content if isinstance(chunk.content, str) else text_of(chunk.content)
        if reasoning:
            if not stream.reasoning_open:
                stream.reasoning_open = True
                rid = reasoning_id(message_id)
                events += [_event("REASONING_START", messageId=rid),
                           _event("REASONING_MESSAGE_START", messageId=rid, role="reasoning")]
            events.append(_event("REASONING_MESSAGE_CONTENT", messageId=reasoning_id(message_id), delta=reasoning))
        if text and not stream.text_done:
            events += self._close_reasoning(stream)
            if not stream.text_open:
                stream.text_open = True
                events.append(_event("TEXT_MESSAGE_START", messageId=message_id, role="assistant",
                                     name=stream.agent))
            events.append(_event("TEXT_MESSAGE_CONTENT", messageId=message_id, delta=text))
        for call_chunk in chunk.tool_call_chunks:
            events += self._on_call_chunk(stream, call_chunk)
        if chunk.usage_metadata:
            self._add_usage(message_id, chunk.usage_metadata, chunk.response_metadata, metadata)
        return events

    def _on_call_chunk(self, stream: _Stream, call_chunk: dict) -> list[Event]:
        events: list[Event] = []
        index = call_chunk.get("index") or 0
        call = stream.calls.get(index)
        if call is None:
            events += self._close_reasoning(stream) + self._close_text(stream)
            call_id = call_chunk.get("id") or f"{stream.message_id}-call-{index}"
            call = stream.calls[index] = self._calls_started[call_id] = _Call(call_id)
            events.append(_event("TOOL_CALL_START", toolCallId=call_id, toolCallName=call_chunk.get("name") or "",
                                  parentMessageId=stream.message_id))
        if call_chunk.get("args"):
            call.args_sent = True
            events.append(_event("TOOL_CALL_ARGS", toolCallId=call.id, delta=call_chunk["args"]))
        return events

    def _close_text(self, stream: _Stream) -> list[Event]:
        if not stream.text_open:
            return []
        stream.text_open, stream.text_done = False, True
        return [_event("TEXT_MESSAGE_END", messageId=stream.message_id)]

    def _close_reasoning(self, stream: _Stream) -> list[Event]:
        if not stream.reasoning_open:
            return []
        stream.reasoning_open = False
        rid = reasoning_id(stream.message_id)
        return [_event("REASONING_MESSAGE_END", messageId=rid),
                _event("REASONING_END", messageId=rid)]

    def _close_stream(self, message_id: str, final: AIMessage | None = None) -> list[Event]:
        """End one streamed message; with its final form, send tool calls whose args never streamed."""
        stream = self._streams.pop(message_id, None)
        if stream is None:
            return []
        events = self._close_reasoning(stream) + self._close_text(stream)
        by_id = {c.id: c for c in stream.calls.values()}
        for call in (final.tool_calls if final is not None else []):
            known = by_id.get(call["id"])
            if known is None:  # provider sent this call atomically, outside the stream
                events += self._emit_call(call, message_id)
            elif not known.args_sent and call["args"]:
                events.append(_event("TOOL_CALL_ARGS", toolCallId=known.id, delta=json.dumps(call["args"])))
        for call in stream.calls.values():
            if call.open:
                call.open = False
                events.append(_event("TOOL_CALL_END", toolCallId=call.id))
        return events

    def _emit_call(self, call: dict, message_id: str) -> list[Event]:
        self._calls_started[call["id"]] = _Call(call["id"], open=False, args_sent=True)
        return [
            _event("TOOL_CALL_START", toolCallId=call["id"], toolCallName=call["name"], parentMessageId=message_id),
            _event("TOOL_CALL_ARGS", toolCallId=call["id"], delta=json.dumps(call["args"])),
            _event("TOOL_CALL_END", toolCallId=call["id"]),
        ]

    def _emit_message(self, message: AIMessage, agent: str | None = None) -> list[Event]:
        """A message a node returned without streaming it (no LLM stream, or a hidden one)."""
        self._streamed.add(message.id)
        events: list[Event] = []
        if text := text_of(message.content):
            events += [_event("TEXT_MESSAGE_START", messageId=message.id, role="assistant", name=agent),
                       _event("TEXT_MESSAGE_CONTENT", messageId=message.id, delta=text),
                       _event("TEXT_MESSAGE_END", messageId=message.id)]
        for call in message.tool_calls:
            events += self._emit_call(call, message.id)
        return events

    def _add_usage(self, message_id: str, usage: dict, response_metadata: dict, metadata: dict) -> None:
        if message_id in self._usage_seen:
            return
        self._usage_seen.add(message_id)
        model = response_metadata.get("model_name") or metadata.get("ls_model_name")
        entry = token_usage_from_langchain_metadata(usage, provider=metadata.get("ls_provider"), model=model)
        if entry is not None:
            self._usage.append(entry)

    # ---------------------------------------------------------------------------------------------- tasks

    def _on_task_start(self, data: dict) -> list[Event]:
        name = data["name"]
        self._task_names[data["id"]] = name
        self._steps[name] += 1
        if self._steps[name] == 1:
            return [_event("STEP_STARTED", stepName=name)]
        return []

    def _on_task_result(self, data: dict) -> list[Event]:
        written = _written_messages(data.get("result") or {})
        finals = {m.id: m for m in written if isinstance(m, AIMessage)}
        events: list[Event] = []
        for message_id in self._task_streams.pop(data["id"], ()):
            events += self._close_stream(message_id, finals.get(message_id))
        events += self._on_written(written)
        self.interrupts += data.get("interrupts") or []
        name = self._task_names.pop(data["id"], data["name"])
        if self._steps[name] > 0:
            self._steps[name] -= 1
            if self._steps[name] == 0:
                events.append(_event("STEP_FINISHED", stepName=name))
        return events

    def _on_subgraph_result(self, data: dict) -> list[Event]:
        """A sub-agent's step ended: close what it streamed and send its tool results now, not when the whole
        sub-agent returns. Its interrupts are reported by the top-level task it runs in."""
        written = _written_messages(data.get("result") or {})
        events: list[Event] = []
        for message in written:
            if isinstance(message, AIMessage) and message.id in self._streams:
                events += self._close_stream(message.id, message)
                for streams in self._task_streams.values():
                    streams.discard(message.id)
        return events + self._on_written(written)

    def _on_written(self, written: list[BaseMessage], agent: str | None = None) -> list[Event]:
        """Messages a task wrote that are not on the wire yet: unstreamed replies, tool results."""
        events: list[Event] = []
        for message in written:
            if message.id is None:
                # e.g. a hand-off tool's messages: the reducer would mint an id after this event. Minted here on
                # the same object, the id on the wire is the one the checkpoint keeps.
                message.id = str(uuid.uuid4())
            if isinstance(message, AIMessage):
                if message.id not in self._streamed:
                    events += self._emit_message(message, agent or message.name)
                if message.usage_metadata and message.id not in self._usage_seen:
                    self._add_usage(message.id, message.usage_metadata, message.response_metadata, {})
            elif isinstance(message, ToolMessage) and message.id not in self._result_messages:
                # also for calls of an earlier run (an approved interrupt)
                self._result_messages.add(message.id)
                self._results.add(message.tool_call_id)
                events.append(_event("TOOL_CALL_RESULT", messageId=message.id, toolCallId=message.tool_call_id,
                                     content=text_of(message.content), role="tool"))
        return events

    def _on_custom(self, data: Any) -> list[Event]:
        if isinstance(data, dict) and data.get("keepalive"):
            self.keepalive_due = True
            return []
        if isinstance(data, dict) and "usage" in data:
            self._add_usage(f"custom-{len(self._usage_seen)}", data["usage"] or {}, {"model_name": data.get("model")},
                            {"ls_provider": data.get("provider")})
            return []
        if isinstance(data, dict) and "step" in data:
            name = str(data["step"])
            if data.get("status") == "finished":
                if self._steps[name] > 0:
                    self._steps[name] -= 1
                    return [_event("STEP_FINISHED", stepName=name)] if not self._steps[name] else []
                return []
            self._steps[name] += 1
            return [_event("STEP_STARTED", stepName=name)] if self._steps[name] == 1 else []
        if isinstance(data, dict) and "name" in data:
            return [{**_event("CUSTOM", name=str(data["name"])), "value": data.get("value")}]
        return [{**_event("CUSTOM", name="loom.custom"), "value": data}]

    def _close_all(self) -> list[Event]:
        events: list[Event] = []
        for message_id in list(self._streams):
            events += self._close_stream(message_id)
        for name, count in self._steps.items():
            if count:
                events.append(_event("STEP_FINISHED", stepName=name))
        self._steps.clear()
        return events


def _written_messages(result: dict) -> list[BaseMessage]:
    """Messages a task wrote to the `messages` channel (one write, a list, or several `$writes`)."""
    value = result.get("messages")
    if value is None:
        return []
    writes = value["$writes"] if isinstance(value, dict) and "$writes" in value else [value]
    out: list[BaseMessage] = []
    for write in writes:
        out += write if isinstance(write, list) else [write]
    return [m for m in out if isinstance(m, BaseMessage)]
