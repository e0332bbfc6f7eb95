"""RunAgentInput -> graph input and runtime context. Pure functions: the server supplies the checkpoint."""

from __future__ import annotations

from typing import Any

from ag_ui.core import RunAgentInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage, SystemMessage, ToolMessage
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.types import Command
from pydantic import TypeAdapter, ValidationError

from loom.adapters.agui.context import ContextError, context_fields, context_overrides, pydantic_type
from loom.adapters.agui.interrupts import agui_interrupts, is_agui_form, plain_answer
from loom.adapters.agui.messages import MessageError, to_langchain
from loom.graphs.context import SERVER_FIELDS


class InputError(ValueError):
    """The request cannot start a run. `code` is machine-readable; the message says what to change."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.field = field


# ---------------------------------------------------------------------------------------- reconciliation


def _same(stored: BaseMessage, sent: BaseMessage) -> bool:
    """Whether a client message is the stored one. Ids decide; user/system text decides edits.

    Assistant and tool messages are matched by id only: clients legitimately render them differently
    (reasoning dropped, tool blocks stripped) and the checkpoint keeps the richer original.
    """
    if stored.id != sent.id or type(stored) is not type(sent):
        return False
    if isinstance(sent, (HumanMessage, SystemMessage)):
        return stored.content == sent.content
    return True


def reconcile(stored: list[BaseMessage], sent: list[BaseMessage]) -> list[BaseMessage]:
    """The `messages` update that makes the thread hold exactly the client's history.

    - the client re-sends the stored history plus new turns: append only the new turns;
    - the history diverges (a regenerated or edited turn, ids minted anew): fork — replace the list with
      the common prefix (stored versions) followed by the client's messages from the divergence on.
      The previous branch stays reachable in the checkpoint history;
    - an unknown thread (restart, another replica) has nothing stored: every message is new.
    Returns [] when there is nothing to change.
    """
    sent = _without_subagent_messages(stored, sent)
    common = 0
    for old, new in zip(stored, sent, strict=False):
        if not _same(old, new):
            break
        common += 1
    if common == len(stored):
        return sent[common:]
    return [RemoveMessage(id=REMOVE_ALL_MESSAGES), *stored[:common], *sent[common:]]


def _without_subagent_messages(stored: list[BaseMessage], sent: list[BaseMessage]) -> list[BaseMessage]:
    """The client's history without assistant and tool messages the thread never kept, found between messages
    it did keep: a sub-agent's streamed work (a deep agent's task, a supervisor's expert), which the client holds
    because it was on the wire. Not an edit of the history; kept, it would break tool-call order."""
    known = {m.id for m in stored}
    last_known = max((i for i, m in enumerate(sent) if m.id in known), default=-1)
    return [m for i, m in enumerate(sent)
            if i > last_known or m.id in known or not isinstance(m, (AIMessage, ToolMessage))]


def needs_answer(messages: list[BaseMessage]) -> bool:
    """Whether the history ends where the graph has something to do (not on a finished assistant reply)."""
    if not messages:
        return False
    last = messages[-1]
    return not (isinstance(last, AIMessage) and not last.tool_calls)


# ------------------------------------------------------------------------------------------ the graph input


def graph_messages(run: RunAgentInput, stored: list[BaseMessage]) -> tuple[list[BaseMessage], list[BaseMessage]]:
    """(update for the messages channel, resulting history). Raises InputError for unusable messages."""
    ids = [m.id for m in run.messages]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise InputError("invalid_messages", f"messages: id {duplicate!r} appears more than once", "messages")
    try:
        sent = to_langchain(run.messages)
    except MessageError as exc:
        raise InputError("invalid_messages", str(exc), exc.field) from None
    update = reconcile(stored, sent)
    if update and isinstance(update[0], RemoveMessage):
        history = update[1:]
    else:
        history = [*stored, *update]
    return update, history


def resume_command(run: RunAgentInput, pending: list[Any]) -> Command:
    """Map `resume[]` onto the thread's pending LangGraph interrupts. Every open interrupt must be answered.

    A graph interrupt in AG-UI form resumes with `{agui_interrupt_id: {"status", "payload"}}` for the AG-UI
    interrupts it stands for; any other (`interrupt("Which city?")`) with the answer's payload itself, as
    LangGraph's own server resumes it (see adapters/agui/interrupts.py).
    """
    if not pending:
        raise InputError("no_pending_interrupt", "resume: this thread has no pending interrupt to resume", "resume")
    answers = {entry.interrupt_id: entry for entry in run.resume or []}
    by_graph_interrupt: dict[str, dict] = {}
    for graph_interrupt in pending:
        values = {}
        for item in agui_interrupts([graph_interrupt]):
            entry = answers.pop(item["id"], None)
            if entry is None:
                raise InputError("incomplete_resume", f"resume: interrupt {item['id']!r} has no answer; answer "
                                 "every open interrupt", "resume")
            values[item["id"]] = {"status": entry.status, "payload": entry.payload}
        by_graph_interrupt[graph_interrupt.id] = values if is_agui_form(graph_interrupt.value) else plain_answer(
            next(iter(values.values())))
    if answers:
        unknown = ", ".join(repr(i) for i in answers)
        raise InputError("stale_resume", f"resume: {unknown} is not an open interrupt of this thread", "resume")
    if len(by_graph_interrupt) == 1:
        return Command(resume=next(iter(by_graph_interrupt.values())))
    return Command(resume=by_graph_interrupt)


# -------------------------------------------------------------------------------------------------- context


def runtime_context(context_schema: type | None, run: RunAgentInput, user_id: str) -> Any:
    """The graph's runtime context: defaults, overridden by `forwardedProps.context`, plus server fields."""
    if context_schema is None:
        return None
    try:
        overrides = context_overrides(run)
    except ContextError as exc:
        raise InputError("invalid_context", str(exc), exc.field) from None
    names = context_fields(context_schema)
    for key in overrides:
        if key in SERVER_FIELDS or key not in names:
            allowed = ", ".join(sorted(names - SERVER_FIELDS))
            raise InputError("invalid_context", f"forwardedProps.context.{key}: unknown setting (allowed: {allowed})",
                             f"forwardedProps.context.{key}")
    values = {
        **overrides,
        "user_id": user_id,
        "frontend_tools": [t.model_dump(exclude_none=True) for t in run.tools or []],
        "client_context": [{"description": c.description, "value": c.value} for c in run.context or []],
    }
    values = {k: v for k, v in values.items() if k in names}
    try:
        return _adapter(context_schema).validate_python(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = ".".join(str(p) for p in error["loc"])
        raise InputError("invalid_context", f"forwardedProps.context.{path}: {error['msg']}",
                         f"forwardedProps.context.{path}") from None


_adapters: dict[type, TypeAdapter] = {}


def _adapter(schema: type) -> TypeAdapter:
    # Built once per graph: pydantic schema construction is far too slow for the request path.
    if schema not in _adapters:
        _adapters[schema] = TypeAdapter(pydantic_type(schema))
    return _adapters[schema]


def user_from_props(run: RunAgentInput) -> str | None:
    """The end user a trusted proxy names in `forwardedProps.user.id` (or `forwardedProps.userId`)."""
    props = run.forwarded_props if isinstance(run.forwarded_props, dict) else {}
    user = props.get("user")
    if isinstance(user, dict) and user.get("id"):
        return str(user["id"])
    if props.get("userId"):
        return str(props["userId"])
    return None

