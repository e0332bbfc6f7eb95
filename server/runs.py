"""One AG-UI run of one graph: prepare (may fail with an HTTP error), then stream events (may end in RUN_ERROR)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing, nullcontext
from dataclasses import dataclass
from typing import Any

from ag_ui.core import RunAgentInput
from langgraph.types import Command

from loom.adapters.agui.context import ContextError, configurable_values
from loom.adapters.agui.inbound import InputError, graph_messages, needs_answer, resume_command, runtime_context
from loom.adapters.agui.outbound import RunTranslator
from loom.adapters.agui.state import StateError, StateSync
from loom.adapters.openpipe.reporter import current as openpipe_reporter
from loom.adapters.openpipe.reporter import opted_out, system_task
from loom.graphs.errors import classify
from loom.graphs.limits import RunBudget, RunLimitExceeded, current_budget
from loom.graphs.telemetry import RunStats
from loom.server.observe import run_finished, run_started
from loom.server.registry import GraphEntry
from loom.server.settings import get_settings
from loom.server.shutdown import SHUTDOWN_CODE, SHUTDOWN_MESSAGE, Drain
from loom.server.threads import Lease
from loom.server.tracing import run_span

log = logging.getLogger("loom.run")

STREAM_MODES = ["messages", "tasks", "custom"]


@dataclass
class PreparedRun:
    entry: GraphEntry
    run: RunAgentInput
    user_id: str
    config: dict
    context: Any
    graph_input: Any  # a messages update, a resume Command, or None when there is nothing to do
    error: InputError | None = None  # a protocol-level refusal, reported as RUN_ERROR in the stream
    resumed_history: list | None = None  # the thread a resume continues, snapshotted to the client first
    state: StateSync | None = None  # AG-UI shared state, for graphs with input keys beyond messages
    known_ids: frozenset[str] = frozenset()  # messages the thread or the client hold before the run
    lease: Lease | None = None  # released before the terminal event: a client's next turn must find it free
    drain: Drain | None = None  # the process's shutdown drain, which may cut the run off
    run_timeout: float = 600.0  # seconds of wall clock for the whole run
    budget: RunBudget | None = None  # output tokens, and the model requests to cancel when the client leaves
    stats: RunStats | None = None  # model and tool calls, tokens: the run's log line and LLM metrics


def run_limits(context: Any) -> tuple[float, int]:
    """(seconds, output tokens) for one run: the server's limits, lowered (never raised) by the run's context."""
    settings = get_settings()
    seconds, tokens = settings.run_timeout, settings.run_max_output_tokens
    asked_seconds = getattr(context, "run_timeout", None)
    asked_tokens = getattr(context, "max_output_tokens", None)
    return (min(seconds, asked_seconds) if asked_seconds else seconds,
            min(tokens, asked_tokens) if asked_tokens else tokens)


async def prepare_run(entry: GraphEntry, run: RunAgentInput, user_id: str) -> PreparedRun:
    """Validate the request against the thread's checkpoint. Raises InputError for a malformed request."""
    context = runtime_context(entry.context_schema, run, user_id)
    try:
        configurable = configurable_values(run)  # graphs that read config["configurable"] (config_schema)
    except ContextError as exc:
        raise InputError("invalid_context", str(exc), exc.field) from None
    config = {
        "configurable": {**configurable, "thread_id": run.thread_id, "user_id": user_id},
        "metadata": {"agui_run_id": run.run_id, "user_id": user_id, "graph": entry.name},
    }
    stats = RunStats()  # a callback like OpenPipe's: it acts at model start and end only
    config["callbacks"] = [stats]
    if (reporter := openpipe_reporter()) is not None and not opted_out(run.forwarded_props):
        # OpenPipe rides along as a callback: it stores references at model start/end, a background task sends.
        handler = reporter.handler(graph=entry.name, thread_id=run.thread_id, user_id=user_id, run_id=run.run_id,
                                   task=system_task(run.forwarded_props))
        if handler is not None:
            config["callbacks"].append(handler)
    snapshot = await entry.graph.aget_state(config)
    pending = list(snapshot.interrupts)
    stored = snapshot.values.get("messages", []) if snapshot.values else []
    prepared = PreparedRun(entry, run, user_id, config, context, None, stats=stats,
                           known_ids=frozenset([*(m.id for m in stored if m.id), *(m.id for m in run.messages)]))
    state_update: dict = {}
    if entry.shared_keys is not None:
        try:
            prepared.state, state_update = StateSync.prepare(entry.shared_keys, run.state, snapshot.values)
        except StateError as exc:
            raise InputError("invalid_state", str(exc), exc.field) from None
    prepared.run_timeout, max_tokens = run_limits(context)
    prepared.budget = RunBudget(max_tokens)
    if run.resume:
        try:
            command = resume_command(run, pending)
            # A shared-state edit sent with the answer is applied as the run resumes.
            prepared.graph_input = Command(resume=command.resume, update=state_update) if state_update else command
            prepared.resumed_history = stored
        except InputError as exc:
            prepared.error = exc
        return prepared
    update, history = graph_messages(run, stored)
    if pending:
        prepared.error = InputError(
            "interrupt_pending",
            "This thread is waiting for an answer to an interrupt; send resume[] covering every open interrupt.")
    elif needs_answer(history):
        prepared.graph_input = {"messages": update, **state_update}
    elif state_update:  # no new message, but the client changed shared state: the graph runs on the new state
        prepared.graph_input = {**({"messages": update} if update else {}), **state_update}
    return prepared


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def encode(events: list[dict]) -> str:
    """SSE frames, one `data:` line per event (JSON never contains a raw newline)."""
    return "".join(f"data: {_dumps(event)}\n\n" for event in events)


async def stream_run(prepared: PreparedRun, encode: Callable[[list[dict]], Any] = encode) -> AsyncIterator[Any]:
    """AG-UI events as SSE text (or as `encode` makes them: the OpenAI edge takes the event dicts).
    Cancelling the iteration (client gone) cancels the graph run."""
    run, entry = prepared.run, prepared.entry
    translator = RunTranslator(run.thread_id, run.run_id)
    translator.known(set(prepared.known_ids))
    started = time.perf_counter()
    first_token: float | None = None
    outcome = "error"
    run_started(entry.name)
    release = prepared.lease.release if prepared.lease is not None else _nothing
    with prepared.drain.track() if prepared.drain is not None else nullcontext(), \
            run_span(entry.name, run.thread_id, run.run_id) as span:
        try:
            yield encode(translator.start() + (prepared.state.opening() if prepared.state else []))
            if prepared.resumed_history is not None:
                # Results of the approved calls refer to tool calls streamed by the interrupted run; the snapshot
                # states that history in this stream (what the client already holds, so its merge keeps it).
                yield encode([translator.snapshot(prepared.resumed_history)])
            if prepared.error is not None:
                outcome = f"error:{prepared.error.code}"
                await release()
                yield encode(translator.error(str(prepared.error), prepared.error.code.upper()))
                return
            if prepared.graph_input is not None:
                # durability="exit": one checkpoint write per run instead of per step. A run cut off midway leaves
                # the thread as it was, which reconciliation repairs from the history the client sends next time.
                # subgraphs=True: a multi-agent graph's sub-agents stream their tokens like a single agent.
                modes = [*STREAM_MODES, "values"] if prepared.state else STREAM_MODES
                current_budget.set(prepared.budget)  # the graph's tasks copy this context: their model calls see it
                deadline = asyncio.get_running_loop().time() + prepared.run_timeout
                async with AsyncExitStack() as held:  # a factory's resources, held for the run
                    graph = await _within_limit(
                        held.enter_async_context(entry.run_graph(prepared.config, prepared.context)),
                        deadline, prepared.run_timeout)
                    stream = graph.astream(prepared.graph_input, prepared.config, context=prepared.context,
                                           stream_mode=modes, version="v2", durability="exit", subgraphs=True)
                    async with aclosing(stream):  # closing it cancels the graph's running tasks
                        while (part := await _within_limit(anext(stream), deadline, prepared.run_timeout)) is not None:
                            events = translator.feed(part)
                            if prepared.state is not None:
                                events += prepared.state.feed(part)
                            if events:
                                if first_token is None and _answers(events):
                                    first_token = time.perf_counter()
                                yield encode(events)
                            elif translator.keepalive_due:
                                translator.keepalive_due = False
                                yield ": keepalive\n\n"
            messages = None
            if translator.interrupts:
                messages = (await entry.graph.aget_state(prepared.config)).values.get("messages", [])
            outcome = "interrupt" if translator.interrupts else (
                "pending_tools" if translator.pending_tool_calls else "success")
            await release()
            yield encode(translator.finish(messages))
        except (asyncio.CancelledError, GeneratorExit) as exc:
            if not (isinstance(exc, asyncio.CancelledError) and prepared.drain is not None and prepared.drain.stopping):
                outcome = "cancelled"
                if prepared.budget is not None:
                    prepared.budget.cancel_model_requests()
                raise
            # Cut off by shutdown (not by the client): nothing was checkpointed, and the client gets a terminal event.
            asyncio.current_task().uncancel()
            outcome = f"error:{SHUTDOWN_CODE}"
            await release()
            yield encode(translator.error(SHUTDOWN_MESSAGE, SHUTDOWN_CODE))
        except Exception as exc:
            code, message = classify(exc)
            outcome = f"error:{code}"
            log.debug("run failed", exc_info=exc)
            await release()
            if not translator.finished:
                yield encode(translator.error(message, code))
        finally:
            ended = time.perf_counter()
            if span is not None:
                span.set_attribute("loom.outcome", outcome)
            run_finished(entry.name, run.thread_id, run.run_id, prepared.user_id, outcome, ended - started,
                         None if first_token is None else first_token - started, prepared.stats,
                         get_settings().openpipe_user_id)


_FIRST_TOKEN_EVENTS = frozenset({"TEXT_MESSAGE_CONTENT", "TOOL_CALL_START", "REASONING_MESSAGE_CONTENT"})


def _answers(events: list[dict]) -> bool:
    """Whether the events carry the model's first output (what time-to-first-token measures)."""
    return any(event.get("type") in _FIRST_TOKEN_EVENTS for event in events)


async def _nothing() -> None:
    return None


async def _within_limit(awaitable: Any, deadline: float, seconds: float) -> Any:
    """`awaitable`'s result (None for a stream's end), or RUN_TIME_LIMIT once the run's deadline passes."""
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            return await awaitable
    except StopAsyncIteration:
        return None
    except TimeoutError:
        if timeout.expired():
            raise RunLimitExceeded("RUN_TIME_LIMIT", f"The run passed its limit of {seconds:g} s (LOOM_RUN_TIMEOUT, "
                                   "or forwardedProps.context.run_timeout).") from None
        raise
