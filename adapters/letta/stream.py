"""A live Letta turn (one SSE stream) read as LangChain messages.

One POST to Letta streams a whole turn: several agent steps, each with reasoning, text, tool calls, tool returns.
AG-UI wants every assistant message closed before the next one starts, and loom's translator closes a streamed
message when the node that streamed it returns (and sends TOOL_CALL_RESULT for the ToolMessages it returns). So
the `letta` graph reads a turn one assistant message (plus its tool returns) per node run; between node runs the
open stream waits in `_live`, keyed by a token the graph keeps in its state.

Mapping (see `message_chunks` and `tool_messages`):
  reasoning_message        -> AIMessageChunk additional_kwargs["reasoning_content"]
  hidden_reasoning_message -> a reasoning marker "[reasoning hidden: redacted|omitted]"
  assistant_message        -> AIMessageChunk content (string or content parts)
  tool_call_message        -> tool_call_chunks (argument deltas accumulated per tool_call_id)
  approval_request_message -> tool_call_chunks, and the call is recorded in `approvals`
  tool_return_message      -> ToolMessage(s), one per entry of `tool_returns`
  usage_statistics         -> usage_metadata on the last chunk of the turn
  stop_reason              -> `stop_reason` (checked by `stop_notice`)
  ping                     -> `on_ping()` (the graph turns it into a keep-alive event)
  error (event: error)     -> LettaStreamError, raised where the stream is read
  user/system/approval_response messages, unknown types -> skipped (echoes of our own input, compaction events)
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from langchain_core.messages import AIMessageChunk, ToolMessage
from letta_client import AsyncLetta, AsyncStream

from loom.adapters.letta.client import cancel_in_background
from loom.adapters.letta.errors import LettaStopped, LettaStreamError, from_letta

_PHASE = {"reasoning_message": 0, "hidden_reasoning_message": 0, "assistant_message": 1,
          "tool_call_message": 2, "approval_request_message": 2}
_RETURN = "tool_return_message"
_NOTHING = object()
PARK_SECONDS = 60.0  # a turn not picked up by the next node run within this is closed (the run went away)

FAILED_STOPS = {
    "error": "the agent's run failed on the Letta server",
    "llm_api_error": "the agent's model provider returned an error",
    "invalid_llm_response": "the agent's model sent a response Letta could not use",
    "invalid_tool_call": "the agent's model made a tool call Letta could not run",
    "insufficient_credits": "the Letta account has no credits left",
    "context_window_overflow_in_system_prompt": "the agent's system prompt does not fit its context window",
    "cancelled": "the run was cancelled on the Letta server",
}
NORMAL_STOPS = {"end_turn", "requires_approval"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content or []
    return "".join(p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "") or "" for p in parts)


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def usage_metadata(usage: Any) -> dict:
    """Letta usage_statistics as LangChain usage_metadata (what loom's translator puts into RUN_FINISHED)."""
    prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
    out: dict[str, Any] = {"input_tokens": prompt, "output_tokens": completion,
                           "total_tokens": usage.total_tokens or prompt + completion}
    details = {k: v for k, v in (("cache_read", usage.cached_input_tokens),
                                 ("cache_creation", usage.cache_write_tokens)) if v is not None}
    if details:
        out["input_token_details"] = details
    if usage.reasoning_tokens is not None:
        out["output_token_details"] = {"reasoning": usage.reasoning_tokens}
    return out


class LettaTurn:
    def __init__(self, stream: AsyncStream, *, client: AsyncLetta, conversation_id: str, agent_id: str,
                 known_calls: set[str] = frozenset(), known_results: set[str] = frozenset(),
                 expected: set[str] = frozenset()):
        self.key = uuid.uuid4().hex
        self.client, self.conversation_id, self.agent_id = client, conversation_id, agent_id
        self.stop_reason: str | None = None
        self.usage: Any = None
        self.done = False
        self.calls: dict[str, dict] = {}  # tool_call_id -> {"name", "arguments"} streamed in this turn
        self.approval_ids: list[str] = []  # calls the agent waits on (approval, or a client-side tool result)
        self.expected = set(expected)  # tool returns the next read should wait for
        self.on_ping: Callable[[], None] = lambda: None
        self._stream = stream
        self._known_calls, self._known_results = set(known_calls), set(known_results)
        self._peeked: Any = _NOTHING
        self._usage_sent = False
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------------------------------- reading

    async def peek(self) -> Any | None:
        """The next message that is part of the transcript (pings, stop reason, usage are absorbed), or None."""
        while self._peeked is _NOTHING and not self.done:
            try:
                item = await self._stream.__anext__()
            except StopAsyncIteration:
                self.done = True
                if self.stop_reason is None:  # a clean close without stop reason: the turn was cut short
                    raise LettaStreamError("The Letta stream ended before the agent finished its turn.") from None
                break
            except Exception as exc:  # an `event: error` frame, a broken connection, a read timeout
                self.done = True
                raise from_letta(exc, base_url=str(self.client.base_url), what="stream") from exc
            kind = _get(item, "message_type")
            if kind == "ping":
                self.on_ping()
            elif kind == "stop_reason":
                self.stop_reason = _get(item, "stop_reason")
            elif kind == "usage_statistics":
                self.usage = item
            elif kind in _PHASE or kind == _RETURN:
                self._peeked = item
        return None if self._peeked is _NOTHING else self._peeked

    def _take(self) -> Any:
        item, self._peeked = self._peeked, _NOTHING
        return item

    @property
    def usage_pending(self) -> bool:
        return self.done and self.usage is not None and not self._usage_sent

    async def next_is_message(self) -> bool:
        """Whether the next read starts an assistant message (or only the final usage is left to report)."""
        item = await self.peek()
        return (item is not None and _get(item, "message_type") != _RETURN) or (item is None and self.usage_pending)

    async def next_is_return(self) -> bool:
        item = await self.peek()
        return item is not None and _get(item, "message_type") == _RETURN

    async def message_chunks(self) -> AsyncIterator[AIMessageChunk]:
        """The next assistant message: until a tool return, a message that must start anew (reasoning after text,
        text after a tool call), or the end of the turn. The last chunk carries the turn's usage at its end."""
        first = await self.peek()
        message_id = _get(first, "id") if first is not None else f"letta-usage-{self.key}"
        phase, indexes, hidden = -1, {}, set()
        while (item := await self.peek()) is not None:
            kind = _get(item, "message_type")
            if kind == _RETURN or _PHASE[kind] < phase:
                break
            phase = _PHASE[kind]
            chunk = self._chunk(self._take(), message_id, indexes, hidden)
            if chunk is not None:
                yield chunk
        last = AIMessageChunk(content="", id=message_id, chunk_position="last",
                              response_metadata={"model_name": self.agent_id, "model_provider": "letta"})
        if self.usage_pending:
            last.usage_metadata = usage_metadata(self.usage)
            self._usage_sent = True
        yield last

    def _chunk(self, item: Any, message_id: str, indexes: dict, hidden: set) -> AIMessageChunk | None:
        kind = _get(item, "message_type")
        if kind == "reasoning_message":
            return AIMessageChunk(content="", id=message_id,
                                  additional_kwargs={"reasoning_content": _get(item, "reasoning") or ""})
        if kind == "hidden_reasoning_message":
            if _get(item, "id") in hidden:
                return None
            hidden.add(_get(item, "id"))
            marker = f"[reasoning hidden: {_get(item, 'state') or 'redacted'}]"
            return AIMessageChunk(content="", id=message_id, additional_kwargs={"reasoning_content": marker})
        if kind == "assistant_message":
            return AIMessageChunk(content=_text(_get(item, "content")), id=message_id)
        chunks = self._call_chunks(item, indexes, approval=kind == "approval_request_message")
        return AIMessageChunk(content="", id=message_id, tool_call_chunks=chunks) if chunks else None

    def _call_chunks(self, item: Any, indexes: dict, approval: bool) -> list[dict]:
        """tool_call_chunks for one frame. `indexes`: this message's call id -> chunk index, and Letta message id
        -> its last call id (token-streamed argument deltas may omit the call id)."""
        many = _get(item, "tool_calls")
        calls = many if isinstance(many, list) else [_get(item, "tool_call") or many]
        out = []
        for call in calls:
            if call is None:
                continue
            frame_key = ("frame", _get(item, "id"))
            call_id = _get(call, "tool_call_id") or indexes.get(frame_key) or f"{_get(item, 'id')}-call"
            indexes[frame_key] = call_id
            if call_id in self._known_calls:  # already in the thread (re-sent after an approval): not again
                continue
            name, args = _get(call, "name"), _get(call, "arguments") or ""
            first = call_id not in indexes
            if first:
                indexes[call_id] = sum(1 for k in indexes if not isinstance(k, tuple))
                self.calls[call_id] = {"name": name or "", "arguments": ""}
                if approval:
                    self.approval_ids.append(call_id)
            if not first and args == "{}" and self.calls[call_id]["arguments"]:
                continue  # Letta closes an approval request with a frame repeating empty arguments
            self.calls[call_id]["arguments"] += args
            out.append({"type": "tool_call_chunk", "index": indexes[call_id], "args": args,
                        "id": call_id if first else None, "name": (name or "") if first else None})
        return out

    def take_tool_messages(self) -> list[ToolMessage]:
        """The peeked tool_return_message as ToolMessages (ids kept: TOOL_CALL_RESULT.messageId is the id)."""
        item = self._take()
        returns = _get(item, "tool_returns") or [item]
        out = []
        for i, ret in enumerate(returns):
            call_id = _get(ret, "tool_call_id")
            self.expected.discard(call_id)
            if call_id in self._known_results:  # Letta echoed a result the thread already holds
                continue
            self._known_results.add(call_id)
            status = "error" if _get(ret, "status") == "error" else "success"
            out.append(ToolMessage(_text(_get(ret, "tool_return")), tool_call_id=call_id, status=status,
                                   name=self.calls.get(call_id, {}).get("name") or None,
                                   id=_get(item, "id") if len(returns) == 1 else f"{_get(item, 'id')}-{i}"))
        return out

    @property
    def approvals(self) -> list[dict]:
        """The calls the agent stopped for (`requires_approval`), as {id, name, args}."""
        out = []
        for call_id in self.approval_ids:
            call = self.calls[call_id]
            try:
                args = json.loads(call["arguments"] or "{}")
            except json.JSONDecodeError:
                args = {"arguments": call["arguments"]}
            out.append({"id": call_id, "name": call["name"], "args": args})
        return out

    def stop_notice(self) -> dict | None:
        """Raise for a stop reason that is a failure; describe one that cut the answer short; None when normal."""
        reason = self.stop_reason
        if reason in FAILED_STOPS:
            raise LettaStopped(f"The Letta agent stopped ({reason}): {FAILED_STOPS[reason]}.")
        if reason in NORMAL_STOPS or reason is None:
            return None
        return {"stopReason": reason, "message": f"The Letta agent stopped early ({reason}); the answer may be "
                                                 "incomplete."}

    # --------------------------------------------------------------------------------------- life cycle

    async def aclose(self, *, cancel: bool = False) -> None:
        """Release the connection; with `cancel`, also ask Letta to stop the run (its reader is gone)."""
        if self._timer is not None:
            self._timer.cancel()
        _live.pop(self.key, None)
        if cancel and not self.done:
            cancel_in_background(self.client, self.conversation_id)
        self.done = True
        await self._stream.close()

    def park(self) -> str:
        """Keep the open stream for the next node run of the same graph run."""
        loop = asyncio.get_running_loop()
        _live[self.key] = self
        self._timer = loop.call_later(PARK_SECONDS, lambda: _expire(self.key))
        return self.key


_live: dict[str, LettaTurn] = {}
_closing: set[asyncio.Task] = set()


def unpark(key: str | None) -> LettaTurn | None:
    turn = _live.pop(key, None) if key else None
    if turn is not None and turn._timer is not None:
        turn._timer.cancel()
        turn._timer = None
    return turn


def _expire(key: str) -> None:
    turn = _live.pop(key, None)
    if turn is not None:
        task = asyncio.get_running_loop().create_task(turn.aclose(cancel=True))
        _closing.add(task)
        task.add_done_callback(_closing.discard)
