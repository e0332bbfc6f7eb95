"""The model ↔ tools loop shared by the tool-using graphs (`agent`, `memory`).

Server-side calls run concurrently, each under a timeout, and a failing tool becomes an error result the model
sees; the client's own (AG-UI frontend) tools are offered alongside and end the run when called.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.graph import END
from langgraph.runtime import Runtime

from loom.graphs.context import BaseContext
from loom.graphs.telemetry import counted_by_loom, record_tool


def turn_iterations(messages: list[AnyMessage]) -> int:
    """Model calls since the last user message (the iteration bound is per user turn)."""
    count = 0
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        count += isinstance(message, AIMessage)
    return count


def refuse_over_budget(response: AIMessage, messages: list[AnyMessage], max_iterations: int,
                       frontend: set[str]) -> list[ToolMessage]:
    """Error results for the server-side calls of a model turn past the iteration budget.

    After the budget the model is called without tools, but a model may call one anyway: answering those calls
    (instead of running them) ends the turn, so the bound holds whatever the model returns.
    """
    if turn_iterations([*messages, response]) <= max_iterations:
        return []
    return [tool_result(call, f"Error: not run: the tool budget of this turn ({max_iterations} model calls) is "
                        "used up.", "error") for call in response.tool_calls if call["name"] not in frontend]


async def model_turn(bound: Any, system: SystemMessage, messages: list[AnyMessage], ctx: Any) -> dict:
    """One model call of a tool loop: the run's sampling options, the answered history, the iteration bound."""
    if options := ctx.call_options():
        bound = bound.bind(**options)
    response = await bound.ainvoke([system, *answered_history(messages)])
    refused = refuse_over_budget(response, messages, ctx.max_iterations, frontend_names(ctx))
    return {"messages": [response, *refused]}


def answered_history(messages: list[AnyMessage]) -> list[AnyMessage]:
    """The history with a placeholder result for any tool call the client never answered.

    OpenAI-compatible servers reject a tool call without a result; this happens when a user writes a new
    message instead of running a pending frontend tool. The checkpoint itself stays as it was.
    """
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    out: list[AnyMessage] = []
    for message in messages:
        out.append(message)
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                if call["id"] not in answered:
                    out.append(ToolMessage("The tool was not run: no result came back.", tool_call_id=call["id"],
                                           status="error"))
    return out


def offered_tools(server_schemas: tuple[dict, ...] | list[dict], ctx: BaseContext) -> list[dict[str, Any]]:
    """OpenAI tool schemas for the model: the server's, then the client's; a client tool of the same name wins."""
    frontend = [
        {"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                          "parameters": t.get("parameters") or {"type": "object", "properties": {}}}}
        for t in ctx.frontend_tools
    ]
    shadowed = {t["function"]["name"] for t in frontend}
    return [*(t for t in server_schemas if t["function"]["name"] not in shadowed), *frontend]


def frontend_names(ctx: BaseContext) -> set[str]:
    return {t["name"] for t in ctx.frontend_tools}


def tool_result(call: dict, content: str, status: str = "success") -> ToolMessage:
    # A fresh id: providers may reuse call ids, and add_messages would then overwrite an earlier result.
    return ToolMessage(content, tool_call_id=call["id"], name=call["name"], status=status, id=str(uuid.uuid4()))


async def run_tool(tool_: BaseTool | None, call: dict, timeout: float,
                   plain_errors: tuple[type[Exception], ...] = ()) -> ToolMessage:
    """One call under a timeout. Errors are information for the model, not a failed run; `plain_errors` are
    reported by their message alone (they are written for users, e.g. a memory limit)."""
    if tool_ is None:
        record_tool("unknown_tool", "error")  # the model's invented name is no label
        return tool_result(call, f"Error: there is no tool named {call['name']!r}.", "error")
    counted = counted_by_loom.set(True)  # wait_for's task copies the context, so the tool's callbacks see it
    try:
        output = await asyncio.wait_for(tool_.ainvoke(call["args"]), timeout)
    except TimeoutError:
        record_tool(tool_.name, "timeout")
        return tool_result(call, f"Error: {call['name']} did not finish within {timeout:g} s.", "error")
    except plain_errors as exc:
        record_tool(tool_.name, "error")
        return tool_result(call, f"Error: {exc}", "error")
    except Exception as exc:
        record_tool(tool_.name, "error")
        return tool_result(call, f"Error: {type(exc).__name__}: {exc}", "error")
    finally:
        counted_by_loom.reset(counted)
    record_tool(tool_.name, "success")
    return tool_result(call, output if isinstance(output, str) else json.dumps(output, default=str))


async def after_tools(state: dict, runtime: Runtime) -> str:
    """Back to the model, unless frontend calls are pending: then the run ends and the client runs them."""
    frontend = frontend_names(runtime.context or BaseContext())
    last_ai = next(m for m in reversed(state["messages"]) if isinstance(m, AIMessage))
    return END if any(c["name"] in frontend for c in last_ai.tool_calls) else "call_model"
