"""The run reporter: a LangChain callback on every run's config records each chat-model call, and a background
sender reports the records to OpenPipe.

Never in the way: the callback only stores references at start and end of a model call (no per-token work, no
serialisation, no I/O); records go into a bounded deque (oldest dropped and counted when full); one background
task converts and sends them in batches, retrying with exponential backoff and jitter. OpenPipe slow, failing
or unreachable only grows the counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage

from loom.adapters.openpipe.client import OpenPipeClient, OpenPipeError, OpenPipeRateLimited
from loom.graphs.telemetry import record_openpipe

log = logging.getLogger("loom.openpipe")

# Interaction types (reqPayload.metadata.interaction_type).
CHAT = "chat_message"
FUNCTION_CALLING = "function_calling"
MOA_PROPOSAL = "moa_proposal"
MOA_AGGREGATION = "moa_aggregation"
MEMORY = "memory_operation"
SYSTEM_TASK = "system_task"

MEMORY_NODES = {"autosave"}  # graphs/memory.py: the extraction call

_reporter: Reporter | None = None


def current() -> Reporter | None:
    """The running reporter (None when reporting is off or not started)."""
    return _reporter


def opted_out(forwarded_props: Any) -> bool:
    """`forwardedProps.openpipe = {"optOut": true}` (the OpenWebUI pipe sends it per user)."""
    props = forwarded_props if isinstance(forwarded_props, dict) else {}
    openpipe = props.get("openpipe")
    return isinstance(openpipe, dict) and bool(openpipe.get("optOut"))


def system_task(forwarded_props: Any) -> str | None:
    """`forwardedProps.task`: the OpenWebUI background task (title_generation, tags_generation, ...)."""
    props = forwarded_props if isinstance(forwarded_props, dict) else {}
    task = props.get("task")
    return str(task) if task else None


class Reporter:
    """Bounded queue plus background sender. `handler(...)` makes the per-run callback."""

    def __init__(self, settings, transport=None):
        self.settings = settings
        self.queue: deque[dict] = deque(maxlen=max(1, settings.openpipe_queue_size))
        self.counters = {"queued": 0, "sent": 0, "dropped": 0, "failed": 0, "retried": 0, "skipped": 0}
        self._wake = asyncio.Event()
        self._client = OpenPipeClient(settings.openpipe_api_key, settings.openpipe_base_url,
                                      settings.openpipe_timeout, transport=transport)
        self._task: asyncio.Task | None = None
        self._in_flight = 0
        self._stopping = False

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> Reporter:
        global _reporter
        self._task = asyncio.get_running_loop().create_task(self._run(), name="openpipe-sender")
        _reporter = self
        return self

    async def stop(self) -> None:
        """Flush what is queued within LOOM_OPENPIPE_FLUSH_SECONDS, then stop."""
        global _reporter
        if _reporter is self:
            _reporter = None
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.settings.openpipe_flush_seconds)
            except TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
            except Exception:  # noqa: BLE001 — shutdown goes on whatever the sender did
                log.exception("openpipe sender failed")
        self.counters["dropped"] += len(self.queue)
        for _ in self.queue:
            record_openpipe("dropped")
        record_openpipe(queued=0)
        if self.queue:
            log.warning("openpipe: %d reports not sent at shutdown", len(self.queue))
        self.queue.clear()
        await self._client.aclose()

    def status(self) -> dict:
        return {**self.counters, "pending": len(self.queue), "in_flight": self._in_flight,
                "capacity": self.queue.maxlen}

    # ------------------------------------------------------------------------------------------ records

    def handler(self, *, graph: str, thread_id: str, user_id: str, run_id: str,
                task: str | None = None) -> ReportingCallback | None:
        """The callback of one run, or None when nothing of it would be reported."""
        s = self.settings
        if task is not None and not s.openpipe_report_system_tasks:
            return None
        if task is None and not (s.openpipe_report_chat or s.openpipe_report_tool_interactions):
            return None
        mode = s.openpipe_user_id
        user = (None if mode == "off" else
                hashlib.sha256(user_id.encode()).hexdigest()[:16] if mode == "hashed" else user_id)
        base = {**s.openpipe_metadata, "graph": graph, "thread_id": thread_id, "agui_run_id": run_id,
                "source": "loom"}
        if user is not None:
            base["user_id"] = user
        return ReportingCallback(self, base, task)

    def put(self, record: dict) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.counters["dropped"] += 1  # deque(maxlen) drops the oldest on append
            record_openpipe("dropped")
        self.queue.append(record)
        self.counters["queued"] += 1
        record_openpipe(queued=len(self.queue))
        self._wake.set()

    # ------------------------------------------------------------------------------------------ sender

    async def _run(self) -> None:
        while True:
            if not self.queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self.queue.popleft() for _ in range(min(len(self.queue), self.settings.openpipe_batch_size))]
            record_openpipe(queued=len(self.queue))
            self._in_flight = len(batch)
            try:
                await asyncio.gather(*(self._send(record) for record in batch))
            finally:
                self._in_flight = 0

    async def _send(self, record: dict) -> None:
        try:
            body = build_report(record, self.settings)
        except Exception:  # noqa: BLE001 — one odd record must not stop the sender
            log.exception("openpipe: could not build a report")
            self.counters["failed"] += 1
            record_openpipe("failed")
            return
        if body is None:
            self.counters["skipped"] += 1
            return
        attempts = 1 + max(0, self.settings.openpipe_max_retries)
        for attempt in range(attempts):
            try:
                await self._client.report(body)
                self.counters["sent"] += 1
                record_openpipe("sent")
                return
            except OpenPipeError as exc:
                if not exc.retryable or attempt == attempts - 1 or self._stopping:
                    self.counters["failed"] += 1
                    record_openpipe("failed")
                    log.warning("openpipe report failed: %s", exc)
                    return
                delay = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
                if isinstance(exc, OpenPipeRateLimited) and exc.retry_after:
                    delay = max(delay, min(exc.retry_after, 60.0))
                self.counters["retried"] += 1
                await asyncio.sleep(delay)


class ReportingCallback(BaseCallbackHandler):
    """Per run. Keeps references at model start/end; conversion happens in the sender."""

    run_inline = True  # called directly in the run's task: no executor hop
    raise_error = False

    def __init__(self, reporter: Reporter, base: dict, task: str | None):
        self.reporter = reporter
        self.base = base
        self.task = task
        self._pending: dict[UUID, dict] = {}

    def on_chat_model_start(self, serialized: dict, messages: list[list[BaseMessage]], *, run_id: UUID,
                            tags: list[str] | None = None, metadata: dict | None = None, **kwargs: Any) -> None:
        self._pending[run_id] = {"messages": messages[0] if messages else [], "metadata": metadata or {},
                                 "params": kwargs.get("invocation_params") or {}, "requested": time.time(),
                                 "started": time.perf_counter()}

    def on_llm_end(self, response, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._pending.pop(run_id, None)
        if call is None:
            return
        generations = response.generations[0] if response.generations else []
        call["message"] = generations[0].message if generations and hasattr(generations[0], "message") else None
        call["generation_info"] = generations[0].generation_info if generations else None
        self._finish(call)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._pending.pop(run_id, None)
        if call is None:
            return
        call["error"] = error
        self._finish(call)

    def _finish(self, call: dict) -> None:
        call["received"] = time.time()
        call["inference_ms"] = (time.perf_counter() - call.pop("started")) * 1000
        call["base"] = self.base
        call["task"] = self.task
        self.reporter.put(call)


# ---------------------------------------------------------------------------------------------- payloads

def interaction_type(call: dict) -> str:
    meta = call["metadata"]
    if call.get("task"):
        return SYSTEM_TASK
    if meta.get("moa_role") == "proposer":
        return MOA_PROPOSAL
    if meta.get("moa_role") == "aggregator":
        return MOA_AGGREGATION
    if meta.get("langgraph_node") in MEMORY_NODES or meta.get("memory_operation"):
        return MEMORY
    message = call.get("message")
    # Tools are offered on most agent turns; a call is function calling when it calls tools or answers results.
    if (isinstance(message, AIMessage) and message.tool_calls) or any(m.type == "tool" for m in call["messages"]):
        return FUNCTION_CALLING
    return CHAT


def message_dict(message: BaseMessage) -> dict:
    from langchain_openai.chat_models.base import _convert_message_to_dict

    return _convert_message_to_dict(message)


_PARAMS = ("model", "temperature", "max_tokens", "max_completion_tokens", "top_p", "stop", "n", "seed",
           "tool_choice", "parallel_tool_calls", "response_format", "frequency_penalty", "presence_penalty")


def build_report(call: dict, settings) -> dict | None:
    """One OpenPipe /report body, or None when settings say this kind is not reported."""
    kind = interaction_type(call)
    if kind == FUNCTION_CALLING and not settings.openpipe_report_tool_interactions:
        return None
    if kind not in (FUNCTION_CALLING, SYSTEM_TASK) and not settings.openpipe_report_chat:
        return None
    params = call["params"]
    meta = call["metadata"]
    model = params.get("model") or params.get("model_name") or meta.get("ls_model_name") or "unknown"
    request: dict = {"model": model, "messages": [message_dict(m) for m in call["messages"]]}
    for key in _PARAMS:
        if params.get(key) is not None and key != "model":
            request[key] = params[key]
    tools = params.get("tools") or []
    if tools:
        request["tools"] = tools
    message = call.get("message")
    tool_calls = [c["name"] for c in message.tool_calls] if isinstance(message, AIMessage) else []
    metadata = {**call["base"], "interaction_type": kind, "node": str(meta.get("langgraph_node", "")),
                "inference_ms": f"{call['inference_ms']:.1f}"}
    if call.get("task"):
        metadata["system_task"] = call["task"]
    for key in ("moa_role", "moa_layer", "moa_index"):
        if meta.get(key) is not None:
            metadata[key] = str(meta[key])
    if "moa_layer" in metadata:
        metadata["layer"] = metadata["moa_layer"]
    if tools:
        metadata["tools_offered"] = ",".join(_tool_name(t) for t in tools)
    if tool_calls:
        metadata["tools_used"] = ",".join(tool_calls)
    request["metadata"] = {k: str(v) for k, v in metadata.items()}
    body = {"requestedAt": int(call["requested"] * 1000), "receivedAt": int(call["received"] * 1000),
            "reqPayload": request, "tags": {"$sdk": "loom"}}
    error = call.get("error")
    if error is not None:
        status = getattr(error, "status_code", None) or 500
        body.update(statusCode=status, errorMessage=str(error)[:2000],
                    respPayload={"error": {"message": str(error)[:2000], "type": type(error).__name__}})
        return body
    body["statusCode"] = 200
    body["respPayload"] = completion(message, model, call.get("generation_info"), call["received"])
    return body


def completion(message: BaseMessage | None, model: str, info: dict | None, created: float) -> dict:
    """The OpenAI chat.completion shape of a LangChain answer."""
    choice_message = message_dict(message) if message is not None else {"role": "assistant", "content": ""}
    choice_message.pop("name", None)
    choice_message.setdefault("content", None)
    meta = getattr(message, "response_metadata", None) or {}
    finish = (info or {}).get("finish_reason") or meta.get("finish_reason") or (
        "tool_calls" if choice_message.get("tool_calls") else "stop")
    body = {"id": meta.get("id") or getattr(message, "id", None) or "loom", "object": "chat.completion",
            "created": int(created), "model": meta.get("model_name") or model,
            "choices": [{"index": 0, "message": choice_message, "finish_reason": finish, "logprobs": None}]}
    usage = getattr(message, "usage_metadata", None)
    if usage:
        body["usage"] = {"prompt_tokens": usage.get("input_tokens", 0),
                         "completion_tokens": usage.get("output_tokens", 0),
                         "total_tokens": usage.get("total_tokens", 0)}
    return body


def _tool_name(tool: Any) -> str:
    if isinstance(tool, dict):
        return str((tool.get("function") or tool).get("name", "?"))
    return str(getattr(tool, "name", "?"))
