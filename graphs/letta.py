"""Chat with an agent living on a Letta server: the new user turn goes to Letta, its streamed answer comes back.

One Letta conversation per thread (created on the thread's first turn, kept in the state). `send` posts the new
input — the user's message, the results of the client's tools, or the user's approval decisions — with token
streaming over SSE; `read` streams one assistant message of the answer (reasoning, text, tool calls) and the tool
returns that follow it, and runs again until the turn ends: one message per node run is what lets every AG-UI
message close before the next starts and each tool result go out as soon as it is known.
A tool the agent may only run with approval becomes an AG-UI interrupt; resuming it sends the decision.
The client's frontend tools are offered to Letta as client-side tools: a call ends the run with it pending, and
the next run sends the client's result.

A Letta conversation cannot be rewound: an edited or regenerated AG-UI turn goes on to the same conversation as a
new message. A conversation deleted on the server is replaced by a new one (the agent's memory carries over, the
conversation's own history does not).

Letta's pings (long tool runs) become SSE keep-alive comments. CUSTOM `letta.stop_reason` {stopReason, message}
when the agent stopped early (max_steps, max_tokens_exceeded, ...). Failures end the run with a LETTA_* code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, NotRequired

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import Field

from loom.adapters.letta.chat_model import LettaChatModel
from loom.adapters.letta.client import create_conversation, letta, otid, send_turn
from loom.adapters.letta.config import letta_settings
from loom.adapters.letta.errors import LettaAgentNotFound, LettaNotFound, LettaStreamError
from loom.adapters.letta.stream import LettaTurn, unpark
from loom.graphs.context import BaseContext

# ------------------------------------------------------------------------------------------------- context


MAX_STEPS = 50
RECURSION_LIMIT = 3 * MAX_STEPS + 10  # read per step, plus send / await_approval around approvals


@dataclass(kw_only=True)
class Context(BaseContext):
    agent_id: str | None = field(default=None, metadata={"description": "Letta agent; default LOOM_LETTA_AGENT_ID."})
    # Each agent step is one `read` run (a superstep): RECURSION_LIMIT below leaves room for the maximum.
    max_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = field(
        default=10, metadata={"description": "Agent steps (model calls) Letta may take for one user turn."})


class State(MessagesState):
    letta_conversation: NotRequired[dict]  # {"agent_id", "id"}: this thread's Letta conversation
    letta_turn: NotRequired[str | None]  # the open stream `read` continues (adapters.letta.stream)
    letta_outbox: NotRequired[list | None]  # what `send` posts instead of the thread's new messages (approvals)
    letta_pending: NotRequired[list]  # tool calls the agent stopped for: {id, name, args}


# ------------------------------------------------------------------------------------------------- helpers


def _content(content: Any) -> str | list[dict]:
    """A LangChain user message's content in Letta's form (text and images)."""
    if isinstance(content, str):
        return content
    parts: list[dict] = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif part.get("type") == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            url = part["image_url"]["url"]
            if url.startswith("data:"):
                media_type, _, data = url[5:].partition(";base64,")
                parts.append({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
            else:
                parts.append({"type": "image", "source": {"type": "url", "url": url}})
    return parts


_LOCAL = "letta_local"  # a ToolMessage loom made itself (a denial): Letta has it already, never send it back


def new_input(messages: list[AnyMessage], conversation_id: str) -> list[dict]:
    """The thread's messages Letta has not seen: the trailing user messages and client tool results."""
    tail: list[AnyMessage] = []
    for message in reversed(messages):
        if not isinstance(message, (HumanMessage, ToolMessage)):
            break
        tail.insert(0, message)
    out: list[dict] = []
    results = [m for m in tail if isinstance(m, ToolMessage) and not m.additional_kwargs.get(_LOCAL)]
    if results:
        out.append({"type": "tool_return", "otid": otid(conversation_id, results[0].id), "tool_returns": [
            {"type": "tool", "tool_call_id": m.tool_call_id, "status": "error" if m.status == "error" else "success",
             "tool_return": m.content if isinstance(m.content, str) else json.dumps(m.content)} for m in results]})
    out += [{"type": "message", "role": "user", "content": _content(m.content), "otid": otid(conversation_id, m.id)}
            for m in tail if isinstance(m, HumanMessage)]
    return out


def _frontend_names(ctx: Context) -> set[str]:
    return {t["name"] for t in ctx.frontend_tools}


def _approved(decision: dict) -> tuple[bool, str | None]:
    """`resolved` approves unless the payload says `approved: false`; `cancelled` rejects (as graphs/agent.py)."""
    payload = decision.get("payload")
    reason = payload.get("reason") if isinstance(payload, dict) else None
    ok = decision.get("status") == "resolved" and not (isinstance(payload, dict) and payload.get("approved") is False)
    return ok, reason


# ------------------------------------------------------------------------------------------------- nodes


async def send(state: State, runtime: Runtime[Context]) -> dict:
    """Post the new input to this thread's Letta conversation and keep the answer's stream open for `read`."""
    ctx = runtime.context or Context()
    settings = letta_settings()
    agent_id = ctx.agent_id or settings.letta_agent_id or ""
    client = letta()
    writer = get_stream_writer()
    update: dict[str, Any] = {"letta_outbox": None}
    conversation = state.get("letta_conversation") or {}
    tools = [{"name": t["name"], "description": t.get("description", ""),
              "parameters": t.get("parameters") or {"type": "object", "properties": {}}} for t in ctx.frontend_tools]
    for fresh in (False, True):
        if fresh or conversation.get("agent_id") != agent_id:  # first turn, another agent, or it was deleted
            conversation = {"agent_id": agent_id, "id": await create_conversation(client, agent_id)}
            update["letta_conversation"] = conversation
        outgoing = state.get("letta_outbox") or new_input(state["messages"], conversation["id"])
        if not outgoing:
            return update
        try:
            stream = await send_turn(client, conversation["id"], outgoing, agent_id=agent_id,
                                     attempts=settings.letta_max_retries + 1, max_steps=ctx.max_steps,
                                     on_wait=lambda: writer({"keepalive": True}),
                                     **({"client_tools": tools} if tools else {}))
            break
        except (LettaNotFound, LettaAgentNotFound):
            # The thread's conversation is gone from the server: continue the thread in a new one (an approval
            # answers a request only the old conversation knew, so that cannot move).
            if "letta_conversation" in update or state.get("letta_outbox"):
                raise
    history = state["messages"]
    turn = LettaTurn(
        stream, client=client, conversation_id=conversation["id"], agent_id=agent_id,
        known_calls={c["id"] for m in history if isinstance(m, AIMessage) for c in m.tool_calls},
        known_results={m.tool_call_id for m in history if isinstance(m, ToolMessage)},
        expected={a["tool_call_id"] for m in outgoing for a in m.get("approvals") or []})
    return {**update, "letta_turn": turn.park()}


async def read(state: State, runtime: Runtime[Context]) -> dict:
    """Stream the next assistant message of the open turn, then the tool returns that answer its calls."""
    turn = unpark(state.get("letta_turn"))
    if turn is None:
        raise LettaStreamError("The Letta stream of this run was closed before it was read to the end.")
    writer = get_stream_writer()
    turn.on_ping = lambda: writer({"keepalive": True})
    out: list[AnyMessage] = []
    try:
        if await turn.next_is_message():
            message = await LettaChatModel(turn=turn).ainvoke(state["messages"])
            if message.content or message.tool_calls or message.invalid_tool_calls or \
                    message.additional_kwargs.get("reasoning_content"):
                out.append(message)
                turn.expected |= {c["id"] for c in message.tool_calls if c["id"] not in turn.approval_ids}
        took = False
        while (turn.expected or not took) and await turn.next_is_return():
            out += turn.take_tool_messages()
            took = True
        if not turn.done:
            return {"messages": out, "letta_turn": turn.park()}
    except BaseException:  # a failure, or the run was cancelled (the client left): stop Letta's run too
        await turn.aclose(cancel=True)
        raise
    await turn.aclose()
    if notice := turn.stop_notice():
        writer({"name": "letta.stop_reason", "value": notice})
    pending = turn.approvals if turn.stop_reason == "requires_approval" else []
    return {"messages": out, "letta_turn": None, "letta_pending": pending}


async def await_approval(state: State, runtime: Runtime[Context]) -> dict:
    """Ask the user about the calls the agent wants approved; the decisions go to Letta through `send`."""
    ctx = runtime.context or Context()
    calls = [c for c in state.get("letta_pending") or [] if c["name"] not in _frontend_names(ctx)]
    decisions = interrupt({"interrupts": [{
        "id": c["id"], "reason": "tool_call", "toolCallId": c["id"],
        "message": f"Allow {c['name']}({json.dumps(c['args'], ensure_ascii=False)})?",
        "responseSchema": {"type": "object",
                           "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}}},
    } for c in calls]})
    approvals, declined = [], []
    for call in calls:
        ok, reason = _approved(decisions.get(call["id"]) or {})
        approvals.append({"type": "approval", "tool_call_id": call["id"], "approve": ok,
                          **({"reason": reason} if reason else {})})
        if not ok:  # Letta streams no tool return for a denied call: the client learns the outcome from loom
            declined.append(ToolMessage(f"The user declined this call{': ' + reason if reason else '.'}",
                                        tool_call_id=call["id"], name=call["name"], status="error",
                                        id=f"letta-declined-{call['id']}", additional_kwargs={_LOCAL: True}))
    conversation_id = (state.get("letta_conversation") or {}).get("id", "")
    message = {"type": "approval", "approvals": approvals,
               "otid": otid(conversation_id, "approval:" + ",".join(c["id"] for c in calls))}
    return {"letta_outbox": [message], "letta_pending": [], "messages": declined}


# ------------------------------------------------------------------------------------------------- edges


async def after_send(state: State) -> str:
    return "read" if state.get("letta_turn") else END


async def after_read(state: State, runtime: Runtime[Context]) -> str:
    if state.get("letta_turn"):
        return "read"
    ctx = runtime.context or Context()
    frontend = _frontend_names(ctx)  # client-side tool calls stay pending for the client to run
    return "await_approval" if any(c["name"] not in frontend for c in state.get("letta_pending") or []) else END


# Input is the conversation only: the other keys are the graph's own, not state shared with AG-UI clients.
builder = StateGraph(State, context_schema=Context, input_schema=MessagesState)
builder.add_node(send)
builder.add_node(read)
builder.add_node(await_approval)
builder.add_edge(START, "send")
builder.add_conditional_edges("send", after_send, ["read", END])
builder.add_conditional_edges("read", after_read, ["read", "await_approval", END])
builder.add_edge("await_approval", "send")

# The run config travels with the exported graph: Studio and loom's server both apply it.
graph = builder.compile(name="letta").with_config(recursion_limit=RECURSION_LIMIT)
