"""Tool-using assistant: calls server-side tools concurrently and the client's own (frontend) tools."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.errors import GraphInterrupt
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import Field

from loom.graphs.config import graph_settings
from loom.graphs.context import BaseContext, SamplingContext, client_context_prompt
from loom.graphs.demo_model import demo_tools
from loom.graphs.llm import chat_model, is_demo_model
from loom.graphs.telemetry import record_confirmations, record_tool
from loom.graphs.toolloop import (
    after_tools,
    frontend_names,
    model_turn,
    offered_tools,
    run_tool,
    tool_result,
    turn_iterations,
)
from loom.graphs.tools import all_tools, needs_confirmation

SYSTEM_PROMPT = (
    "You are a helpful assistant. Use the tools when they give a more reliable answer than you could "
    "(arithmetic, the current time, unit conversions). Answer concisely."
)

# ------------------------------------------------------------------------------------------------- context


@dataclass(kw_only=True)
class Context(BaseContext, SamplingContext):
    model: str | None = field(default=None, metadata={"description": "Chat model; default: LOOM_LLM_MODEL."})
    system_prompt: str = field(default=SYSTEM_PROMPT, metadata={"description": "System prompt."})
    max_iterations: Annotated[int, Field(ge=1, le=100)] = field(
        default=8, metadata={"description": "Model calls per user turn; the last one answers without tools."}
    )
    tool_timeout: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = field(
        default=30.0, metadata={"description": "Seconds one server-side tool may run."}
    )
    confirm_tools: list[str] = field(
        default_factory=list, metadata={"description": "Server-side tools that wait for the user's approval."}
    )


class State(MessagesState):
    pass


def backend_tools() -> dict:
    return all_tools(graph_settings().extra_tools)


@lru_cache
def _backend_schemas(extra_tools: str) -> tuple[dict, ...]:
    # Converting tools to OpenAI schemas on every model call was measurable per run; do it once.
    return tuple(convert_to_openai_tool(t) for t in all_tools(extra_tools).values())

# ------------------------------------------------------------------------------------------------- nodes


async def call_model(state: State, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context or Context()
    messages = state["messages"]
    system = SystemMessage(ctx.system_prompt + client_context_prompt(ctx.client_context))
    model = chat_model(ctx.model, ctx.temperature, ctx.max_tokens)
    tools = offered_tools(_backend_schemas(graph_settings().extra_tools), ctx)

    if turn_iterations(messages) >= ctx.max_iterations:
        system.content += "\n\nThe tool budget for this turn is used up: answer now from what you have."
        bound = model
    elif is_demo_model():
        # The embedded demo model only produces tool calls when forced, and 500s on tool_choice="auto"
        # (llama.cpp cannot parse its free-form output as a call): force a call on a fresh user turn, answer
        # plainly after tool results.
        # demo_tools in a thread: its first call lists the time zones on disk (`langgraph dev` refuses
        # blocking calls on its event loop).
        fresh_turn = isinstance(messages[-1], HumanMessage)
        bound = model.bind_tools(await asyncio.to_thread(demo_tools, tools, messages[-1].text), tool_choice="any",
                                 parallel_tool_calls=False) if fresh_turn else model
    else:
        bound = model.bind_tools(tools)
    return await model_turn(bound, system, messages, ctx)


async def dispatch_tools(state: State, runtime: Runtime[Context]) -> dict:
    """Run the server-side calls of the last model turn concurrently, each under a timeout."""
    ctx = runtime.context or Context()
    frontend = frontend_names(ctx)
    calls = [c for c in state["messages"][-1].tool_calls if c["name"] not in frontend]
    backend = backend_tools()

    # Ask before running anything: on resume this node runs again from the top, so nothing runs twice.
    to_confirm = [c for c in calls
                  if c["name"] in backend and needs_confirmation(backend[c["name"]], ctx.confirm_tools)]
    decisions: dict[str, Any] = {}
    if to_confirm:
        try:
            decisions = interrupt({"interrupts": [_confirmation_request(c) for c in to_confirm]})
        except GraphInterrupt:  # asked now; the resumed run counts the answers
            record_confirmations("asked", len(to_confirm))
            raise

    async def run(call: dict) -> ToolMessage:
        decision = decisions.get(call["id"])
        if decision is not None:
            record_confirmations("approved" if _approved(decision) else "rejected")
        if decision is not None and not _approved(decision):
            record_tool(call["name"], "rejected")
            payload = decision.get("payload")
            reason = payload.get("reason") if isinstance(payload, dict) else None
            return tool_result(call, "The user rejected this tool call." + (f" Reason: {reason}" if reason else ""),
                               "error")
        return await run_tool(backend.get(call["name"]), call, ctx.tool_timeout)

    return {"messages": list(await asyncio.gather(*(run(c) for c in calls)))}


def _confirmation_request(call: dict) -> dict:
    return {
        "id": call["id"],
        "reason": "tool_call",
        "toolCallId": call["id"],
        "message": f"Allow {call['name']}({json.dumps(call['args'], ensure_ascii=False)})?",
        "responseSchema": {
            "type": "object",
            "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}},
        },
    }


def _approved(decision: dict) -> bool:
    """`resolved` approves unless the payload says `approved: false`; `cancelled` rejects."""
    payload = decision.get("payload")
    if decision.get("status") != "resolved":
        return False
    return not (isinstance(payload, dict) and payload.get("approved") is False)


# ------------------------------------------------------------------------------------------------- edges
# Edge functions are async (every graph's): LangGraph runs a sync one in its thread pool, a thread hop per
# routing decision that cost more CPU than the decision itself.


async def after_model(state: State, runtime: Runtime[Context]) -> str:
    frontend = frontend_names(runtime.context or Context())
    calls = getattr(state["messages"][-1], "tool_calls", None) or []
    return "dispatch_tools" if any(c["name"] not in frontend for c in calls) else END


builder = StateGraph(State, context_schema=Context)
builder.add_node(call_model)
builder.add_node(dispatch_tools)
builder.add_edge(START, "call_model")
builder.add_conditional_edges("call_model", after_model, ["dispatch_tools", END])
builder.add_conditional_edges("dispatch_tools", after_tools, ["call_model", END])

graph = builder.compile(name="agent")
