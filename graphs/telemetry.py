"""Prometheus metrics shared by the server, the graphs and the adapters (which may not import loom.server).

Under `loom serve --workers N` the server points PROMETHEUS_MULTIPROC_DIR at a directory of its own before the
workers start, so every metric here is written to per-process files that `GET /metrics` sums up.

Labels stay bounded: never a thread, run or user id; model and tool names are capped (the first
`MAX_LABEL_VALUES` distinct names keep their own series, later ones share `other`), because a client can name
models (MoA proposers) and tools (frontend tools) of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from prometheus_client import Counter, Gauge, Histogram

# 5 ms to 60 s: a streamed first token on loopback is a few ms, a slow model's whole run tens of seconds.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_LABEL_VALUES = 64
OTHER = "other"

enabled = True  # LOOM_METRICS_ENABLED; off, every record_* returns at once (the bench compares both)

RUNS = Counter("loom_runs", "Runs by graph and outcome; code is the RUN_ERROR code of a failed run.",
               ["graph", "outcome", "code"])
RUNS_IN_FLIGHT = Gauge("loom_runs_in_flight", "Runs streaming now.", ["graph"], multiprocess_mode="livesum")
RUN_SECONDS = Histogram("loom_run_duration_seconds", "Wall clock of a run, first byte to terminal event.",
                        ["graph"], buckets=SECONDS_BUCKETS)
TTFT_SECONDS = Histogram("loom_run_ttft_seconds", "Run start to its first streamed text or tool call.",
                         ["graph"], buckets=SECONDS_BUCKETS)
LLM_REQUESTS = Counter("loom_llm_requests", "Chat-model requests by model and outcome (success or error code).",
                       ["model", "outcome"])
LLM_SECONDS = Histogram("loom_llm_request_duration_seconds", "Chat-model request latency, start to last chunk.",
                        ["model"], buckets=SECONDS_BUCKETS)
LLM_TOKENS = Counter("loom_llm_tokens", "Tokens by model and direction (in: prompt, out: completion).",
                     ["model", "direction"])
LLM_RETRIES = Counter("loom_llm_retries", "Chat-model requests sent again (by the openai client or MoA).",
                      ["source"])
TOOL_CALLS = Counter("loom_tool_calls", "Server-side tool calls by tool and status.", ["tool", "status"])
CONFIRMATIONS = Counter("loom_tool_confirmations", "Tool calls put to the user: asked, approved, rejected.",
                        ["decision"])
MOA_PROPOSER_FAILURES = Counter("loom_moa_proposer_failures", "MoA proposers without an answer, by reason code.",
                                ["reason"])
MOA_FALLBACKS = Counter("loom_moa_fallbacks", "MoA layers that fell short, by fallback mode.", ["mode"])
MEMORY_OPERATIONS = Counter("loom_memory_operations", "Memory operations by kind.", ["kind"])
MEMORY_RECALL_SECONDS = Histogram("loom_memory_recall_duration_seconds", "The memory graph's recall search.",
                                  buckets=SECONDS_BUCKETS)
LETTA_REQUESTS = Counter("loom_letta_requests", "Turns sent to Letta by outcome (success, retry, error code).",
                         ["outcome"])
OPENPIPE_QUEUE = Gauge("loom_openpipe_queue_depth", "OpenPipe reports waiting to be sent.",
                       multiprocess_mode="livesum")
OPENPIPE_REPORTS = Counter("loom_openpipe_reports", "OpenPipe reports by result: sent, dropped, failed.", ["result"])
RUN_REFUSALS = Counter("loom_run_refusals", "Runs refused before they started, by reason (thread_busy; "
                       "thread_not_found is also another user's thread).", ["reason"])
REJECTIONS = Counter("loom_http_rejections", "Requests answered 401/403/404/409/413/422/431, by status.",
                     ["status"])

_seen: dict[str, set[str]] = {"model": set(), "tool": set()}


def bounded(kind: str, value: str | None) -> str:
    """`value` as a label, or `other` once `MAX_LABEL_VALUES` distinct values of this kind were seen."""
    if not value:
        return "unknown"
    seen = _seen[kind]
    if value in seen:
        return value
    if len(seen) >= MAX_LABEL_VALUES:
        return OTHER
    seen.add(value)
    return value


# Set while loom's own tool loop runs a tool: it records the call itself, with a status the callbacks cannot tell
# (a timeout); RunStats records every other tool (a ToolNode in a user's graph).
counted_by_loom: contextvars.ContextVar[bool] = contextvars.ContextVar("loom_tool_counted", default=False)


def record_tool(tool: str, status: str) -> None:
    """status: success, error, timeout, rejected."""
    if enabled:
        TOOL_CALLS.labels(bounded("tool", tool), status).inc()


def record_confirmations(decision: str, count: int = 1) -> None:
    if enabled and count:
        CONFIRMATIONS.labels(decision).inc(count)


def record_moa(failure: str | None = None, fallback: str | None = None, retries: int = 0) -> None:
    if not enabled:
        return
    if failure:
        MOA_PROPOSER_FAILURES.labels(failure).inc()
    if fallback:
        MOA_FALLBACKS.labels(fallback).inc()
    if retries > 0:
        LLM_RETRIES.labels("moa").inc(retries)


def record_memory(kind: str) -> None:
    if enabled:
        MEMORY_OPERATIONS.labels(kind).inc()


def record_recall(seconds: float) -> None:
    if enabled:
        MEMORY_OPERATIONS.labels("recall").inc()
        MEMORY_RECALL_SECONDS.observe(seconds)


def record_letta(outcome: str) -> None:
    if enabled:
        LETTA_REQUESTS.labels(outcome).inc()


def record_openpipe(result: str | None = None, queued: int | None = None) -> None:
    if not enabled:
        return
    if result:
        OPENPIPE_REPORTS.labels(result).inc()
    if queued is not None:
        OPENPIPE_QUEUE.set(queued)


class _RetryLog(logging.Handler):
    """Counts the openai client's own retries, which it announces only in its log ("Retrying request to …")."""

    def emit(self, record: logging.LogRecord) -> None:
        if enabled and isinstance(record.msg, str) and record.msg.startswith("Retrying request"):
            LLM_RETRIES.labels("client").inc()


def count_client_retries() -> None:
    logger = logging.getLogger("openai._base_client")
    if not any(isinstance(h, _RetryLog) for h in logger.handlers):
        logger.addHandler(_RetryLog(logging.INFO))
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


class RunStats(BaseCallbackHandler):
    """One run's model and tool calls: what its log line reports, and the LLM metrics as the calls end.

    A callback on the run's config sees every chat model of every graph (corpus graphs too), without per-token
    work: it acts at model start and end only.
    """

    run_inline = True  # called in the run's own task, no executor hop
    raise_error = False

    def __init__(self) -> None:
        self.model_calls = 0
        self.tool_calls = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self._started: dict[UUID, tuple[float, str]] = {}
        self._tools: dict[UUID, str] = {}  # tools outside loom's own tool loop, by callback run id

    def on_chat_model_start(self, serialized: dict, messages: list, *, run_id: UUID,
                            metadata: dict | None = None, **kwargs: Any) -> None:
        self.model_calls += 1
        model = (metadata or {}).get("ls_model_name") or (kwargs.get("invocation_params") or {}).get("model")
        self._started[run_id] = (time.perf_counter(), model or "")

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        started, model = self._started.pop(run_id, (None, ""))
        usage = _usage(response)
        self.tokens_in += usage.get("input_tokens", 0)
        self.tokens_out += usage.get("output_tokens", 0)
        if enabled and started is not None:
            label = bounded("model", model)
            LLM_REQUESTS.labels(label, "success").inc()
            LLM_SECONDS.labels(label).observe(time.perf_counter() - started)
            if usage:
                LLM_TOKENS.labels(label, "in").inc(usage.get("input_tokens", 0))
                LLM_TOKENS.labels(label, "out").inc(usage.get("output_tokens", 0))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        started, model = self._started.pop(run_id, (None, ""))
        if enabled and started is not None:
            from loom.graphs.errors import classify

            label = bounded("model", model)
            outcome = "cancelled" if isinstance(error, asyncio.CancelledError) else classify(error)[0]
            LLM_REQUESTS.labels(label, outcome).inc()
            LLM_SECONDS.labels(label).observe(time.perf_counter() - started)

    def on_tool_start(self, serialized: dict, input_str: str, *, run_id: UUID, **kwargs: Any) -> None:
        self.tool_calls += 1
        if not counted_by_loom.get():
            self._tools[run_id] = kwargs.get("name") or (serialized or {}).get("name") or ""

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if (tool := self._tools.pop(run_id, None)) is not None:
            record_tool(tool, "success")

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        tool = self._tools.pop(run_id, None)
        if tool is not None and not isinstance(error, asyncio.CancelledError):  # a cancelled run is no tool error
            record_tool(tool, "error")


def _usage(response: Any) -> dict:
    for generations in response.generations or []:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage:
                return usage
    return {}
