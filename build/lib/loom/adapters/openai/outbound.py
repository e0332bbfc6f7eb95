"""AG-UI events of one run -> `chat.completion.chunk`s, or one `chat.completion`. Pure: no I/O.

- text deltas are `delta.content`; reasoning is `delta.reasoning_content`;
- calls of the caller's own tools are `delta.tool_calls`, and end the answer with `finish_reason: "tool_calls"`;
- server-side tool calls never become `tool_calls` (the client would try to run them): with `progress` on they
  are rendered into the content as OpenWebUI's `<details type="tool_calls">` blocks, with MoA's proposals;
- a confirmation the run waits for is a `loom_confirm` tool call (see confirm.py);
- usage is the sum over every model call of the run (RUN_FINISHED.usage);
- RUN_ERROR is an `{"error": {...}}` chunk, which the openai SDKs raise as APIError.
"""

from __future__ import annotations

import json
import time
from typing import Any

from loom.adapters.openai import confirm
from loom.adapters.openwebui.render import proposals_block, separator, tool_call_block

# RUN_ERROR codes -> (HTTP status, OpenAI error type) for answers not yet streamed.
RUN_ERRORS = {"LLM_RATE_LIMITED": (429, "rate_limit_error"), "LLM_TIMEOUT": (504, "server_error"),
              "INTERNAL_ERROR": (500, "server_error")}
UPSTREAM = (502, "server_error")  # the model server (or Letta) failed, not loom or the caller


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage_of(entries: list[dict] | None) -> dict:
    """RUN_FINISHED.usage (one entry per model) as OpenAI usage."""
    prompt = sum(e.get("inputTokens") or 0 for e in entries or [])
    completion = sum(e.get("outputTokens") or 0 for e in entries or [])
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    reasoning = sum(e.get("reasoningTokens") or 0 for e in entries or [])
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    cached = sum(e.get("cachedInputTokens") or 0 for e in entries or [])
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


class ChunkTranslator:
    """Fed the events of one run in order; returns the chunks to stream, and holds the whole answer."""

    def __init__(self, completion_id: str, model: str, thread_id: str, *, client_tools: frozenset[str],
                 progress: bool = False, include_usage: bool = False, collect: bool = False):
        self.id, self.model, self.thread_id = completion_id, model, thread_id
        self.created = int(time.time())
        self.client_tools, self.progress = client_tools, progress
        self.include_usage, self.collect = include_usage, collect
        self.content: list[str] = []  # collected only for a non-streamed answer
        self.reasoning: list[str] = []
        self.tool_calls: list[dict] = []  # client tool calls and confirmations, as in a chat.completion
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.error: dict | None = None  # RUN_ERROR: {"code", "message"}
        self._text_start = False  # a text message started: its first delta opens a paragraph
        self._tail = ""  # the end of the content so far: new messages and blocks start a paragraph
        self._client_calls: dict[str, int] = {}  # tool call id -> index in tool_calls
        self._server_calls: dict[str, tuple[str, str]] = {}  # id -> (name, arguments so far)
        self._proposals: dict[Any, list[dict]] = {}
        self._head: str | None = None  # `data: {"id":…,"choices":[{"index":0,"delta":` once encoded

    def sse(self, chunk: dict) -> str:
        """One chunk as an SSE frame. A plain delta reuses the encoded envelope: per token only the delta is
        encoded (the same JSON as encoding the whole chunk)."""
        choices = chunk.get("choices")
        if choices and choices[0]["finish_reason"] is None and "usage" not in chunk and "error" not in chunk:
            if self._head is None:
                envelope = _dumps({k: chunk[k] for k in ("id", "object", "created", "model")})
                self._head = f'data: {envelope[:-1]},"choices":[{{"index":0,"delta":'
            return f"{self._head}{_dumps(choices[0]['delta'])}{_DELTA_TAIL}"
        return sse(chunk)

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    def feed(self, event: dict) -> list[dict]:
        kind = event["type"]
        if kind == "TEXT_MESSAGE_CONTENT":
            return self._text(event["delta"])
        if kind == "TEXT_MESSAGE_START":
            self._text_start = True
            return []
        if kind == "REASONING_MESSAGE_CONTENT":
            if self.collect:
                self.reasoning.append(event["delta"])
            return [self._chunk({"reasoning_content": event["delta"]})]
        if kind == "TOOL_CALL_START":
            return self._call_start(event)
        if kind == "TOOL_CALL_ARGS":
            return self._call_args(event)
        if kind == "TOOL_CALL_RESULT":
            return self._call_result(event)
        if kind == "CUSTOM":
            return self._custom(event)
        if kind == "RUN_STARTED":
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "RUN_FINISHED":
            return self._finished(event)
        if kind == "RUN_ERROR":
            self.error = {"code": event.get("code") or "INTERNAL_ERROR", "message": event.get("message") or ""}
            self.usage = usage_of(event.get("usage"))
            return [error_body(self.error["message"], "server_error", self.error["code"])]
        return []

    # -------------------------------------------------------------------------------------------- content

    def _text(self, delta: str) -> list[dict]:
        if self._text_start:  # a new assistant message in the same run: its own paragraph
            self._text_start = False
            delta = separator(self._tail) + delta
        return self._content(delta)

    def _content(self, text: str) -> list[dict]:
        if not text:
            return []
        self._tail = (self._tail + text)[-2:]
        if self.collect:
            self.content.append(text)
        return [self._chunk({"content": text})]

    def _block(self, block: str) -> list[dict]:
        return self._content(separator(self._tail) + block)

    # ---------------------------------------------------------------------------------------------- tools

    def _call_start(self, event: dict) -> list[dict]:
        call_id, name = event["toolCallId"], event.get("toolCallName") or ""
        if name not in self.client_tools:
            self._server_calls[call_id] = (name, "")
            return []
        return self._tool_call_delta(call_id, name, "")

    def _tool_call_delta(self, call_id: str, name: str, arguments: str) -> list[dict]:
        index = self._client_calls[call_id] = len(self.tool_calls)
        self.tool_calls.append({"id": call_id, "type": "function", "function": {"name": name,
                                                                               "arguments": arguments}})
        return [self._chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": arguments}}]})]

    def _call_args(self, event: dict) -> list[dict]:
        call_id, delta = event["toolCallId"], event["delta"]
        if call_id in self._server_calls:
            name, args = self._server_calls[call_id]
            self._server_calls[call_id] = (name, args + delta)
            return []
        index = self._client_calls.get(call_id)
        if index is None:
            return []
        self.tool_calls[index]["function"]["arguments"] += delta
        return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})]

    def _call_result(self, event: dict) -> list[dict]:
        call = self._server_calls.get(event["toolCallId"])
        if call is None or not self.progress:
            return []
        return self._block(tool_call_block(event["toolCallId"], call[0], call[1] or "{}", event.get("content", "")))

    def _custom(self, event: dict) -> list[dict]:
        """MoA proposals, one block per finished layer (the OpenWebUI pipe's rendering)."""
        name, value = event.get("name"), event.get("value")
        if not self.progress or not isinstance(value, dict):
            return []
        if name == "loom.moa.proposer" and value.get("status") == "finished":
            self._proposals.setdefault(value.get("layer"), []).append(value)
        elif name == "loom.moa.layer" and (answers := self._proposals.pop(value.get("layer"), [])):
            return self._block(proposals_block(value.get("layer"), answers))
        return []

    # ------------------------------------------------------------------------------------------------ end

    def _finished(self, event: dict) -> list[dict]:
        outcome = event.get("outcome") or {}
        chunks: list[dict] = []
        if outcome.get("type") == "interrupt":
            for interrupt in outcome.get("interrupts") or []:
                call_id = confirm.call_id(self.thread_id, interrupt["id"])
                chunks += self._tool_call_delta(call_id, confirm.TOOL_NAME,
                                                confirm.arguments(interrupt, self._server_calls))
        self.finish_reason = "tool_calls" if self.tool_calls else "stop"
        self.usage = usage_of(event.get("usage"))
        chunks.append(self._chunk({}, self.finish_reason))
        if self.include_usage:
            chunks.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "choices": [], "usage": self.usage})
        return chunks

    def completion(self) -> dict:
        """The whole answer as a `chat.completion` (for `stream: false`; build with collect=True)."""
        message: dict = {"role": "assistant", "content": "".join(self.content) or None, "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason or "stop",
                             "logprobs": None}],
                "usage": self.usage or usage_of(None)}


def run_error_status(code: str) -> tuple[int, str]:
    """The HTTP status and OpenAI error type for a run that failed before anything was sent."""
    return RUN_ERRORS.get(code, UPSTREAM if code.startswith(("LLM_", "LETTA_")) else (500, "server_error"))


def sse(chunk: dict) -> str:
    return f"data: {_dumps(chunk)}\n\n"


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_DELTA_TAIL = ',"finish_reason":null}]}\n\n'
DONE = "data: [DONE]\n\n"
