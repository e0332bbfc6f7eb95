"""Chat with long-term memory: recalls the user's relevant memories each turn, and can save, update, search and
delete them.

Each turn: `recall` searches the user's memories for the new message and puts the best `recall` of them into
the system prompt; `call_model` answers, with memory tools (and the client's frontend tools) bound;
`dispatch_tools` runs memory tool calls concurrently; with `auto_save`, `autosave` then asks the model (a call
tagged `nostream`, so it is not streamed) which facts of the user's message are worth keeping, and stores them.
Memories belong to the run's `user_id` (set by the server from the API key), in the store the graph is compiled
with (loom's SQLite/PostgreSQL store, or LangGraph Studio's).

CUSTOM events:
  loom.memory.recalled  {memories: [{id, content, tags, created_at, updated_at, score}]} every turn, before the
                        answer (the OpenWebUI pipe shows them as sources); `score` is the fused relevance in
                        (0, 1], absent when search is switched off (then the newest memories are recalled).
  loom.memory.saved     {memories: [{id, content, tags, created_at, updated_at}]} when auto-save stored some.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, NotRequired

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime, get_runtime
from pydantic import Field

from loom.graphs.config import graph_settings
from loom.graphs.context import BaseContext, SamplingContext, client_context_prompt
from loom.graphs.demo_model import memory_extraction_messages, memory_extraction_schema
from loom.graphs.llm import chat_model, is_demo_model
from loom.graphs.memory_backend import memory_backend
from loom.graphs.memory_store import MemorySearchDisabled, MemoryStoreError
from loom.graphs.telemetry import record_memory, record_recall
from loom.graphs.toolloop import (
    after_tools,
    frontend_names,
    model_turn,
    offered_tools,
    run_tool,
    turn_iterations,
)

log = logging.getLogger("loom.memory")

RECALLED_EVENT, SAVED_EVENT = "loom.memory.recalled", "loom.memory.saved"
MAX_AUTO_SAVED = 5  # facts stored per turn by auto-save: a runaway extraction cannot flood the store

SYSTEM_PROMPT = (
    "You are a helpful assistant with long-term memory of this user. Use what you remember when it is relevant. "
    "When the user tells you something worth remembering across conversations (preferences, personal details, "
    "plans), or asks you to remember or forget something, use the memory tools. Answer concisely."
)

EXTRACTION_PROMPT = (
    "You maintain a long-term memory of facts about the user. Read the user's latest message and list the new "
    "facts worth remembering in later conversations: stable preferences, personal details, relationships, plans, "
    "corrections. Skip questions, small talk, and anything already remembered. Write each fact as one short "
    'sentence in the first person, as the user would ("I am vegetarian."). Answer with JSON only: '
    '{"memories": ["..."]}, with an empty list when there is nothing new.'
)

# ------------------------------------------------------------------------------------------------- context


@dataclass(kw_only=True)
class Context(BaseContext, SamplingContext):
    model: str | None = field(default=None, metadata={"description": "Chat model; default: LOOM_LLM_MODEL."})
    system_prompt: str = field(default=SYSTEM_PROMPT, metadata={"description": "System prompt."})
    recall: Annotated[int | None, Field(ge=0, le=100)] = field(
        default=None, metadata={"description": "Memories recalled into each turn; default LOOM_MEMORY_RECALL."}
    )
    auto_save: bool = field(
        default=True, metadata={"description": "After answering, store new facts from the user's message."}
    )
    extraction_model: str | None = field(
        default=None, metadata={"description": "Model deciding what auto-save stores; default: the chat model."}
    )
    max_iterations: Annotated[int, Field(ge=1, le=100)] = field(
        default=8, metadata={"description": "Model calls per user turn; the last one answers without tools."}
    )
    tool_timeout: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = field(
        default=30.0, metadata={"description": "Seconds one memory tool call may run."}
    )


class State(MessagesState):
    recalled: NotRequired[list[dict]]  # this turn's recalled memories (replaced every turn)


# --------------------------------------------------------------------------------------------------- tools
# Tools find the user and the store through the run's runtime: the model can never name another user.


def _backend_and_user():
    runtime = get_runtime(Context)
    return memory_backend(runtime.store), (runtime.context or Context()).user_id


@tool
async def save_memory(content: str, tags: list[str] | None = None) -> str:
    """Remember a fact about the user for later conversations. One fact per call, as a short sentence."""
    backend, user_id = _backend_and_user()
    record_memory("save")
    memory = await backend.add(user_id, content, tags)
    return json.dumps({"saved": memory.to_dict()}, ensure_ascii=False)


@tool
async def update_memory(memory_id: str, content: str | None = None, tags: list[str] | None = None) -> str:
    """Correct or replace a remembered fact, by its id (shown with each remembered fact or search result)."""
    backend, user_id = _backend_and_user()
    record_memory("update")
    memory = await backend.update(user_id, memory_id, content, tags)
    return json.dumps({"updated": memory.to_dict()}, ensure_ascii=False)


@tool
async def search_memories(query: str, limit: int = 5) -> str:
    """Search everything remembered about the user (beyond what was recalled for this message)."""
    backend, user_id = _backend_and_user()
    record_memory("search")
    found = await backend.search(user_id, query, limit)
    return json.dumps({"memories": [m.to_dict() for m in found]}, ensure_ascii=False)


@tool
async def delete_memory(memory_id: str) -> str:
    """Forget a remembered fact, by its id. Use when the user asks to forget something or it is no longer true."""
    backend, user_id = _backend_and_user()
    record_memory("delete")
    await backend.delete(user_id, memory_id)
    return json.dumps({"deleted": memory_id})


TOOLS = {t.name: t for t in (save_memory, update_memory, search_memories, delete_memory)}
TOOL_SCHEMAS = [convert_to_openai_tool(t) for t in TOOLS.values()]  # once: conversion is slow per call
WRITE_TOOLS = {"save_memory", "update_memory", "delete_memory"}

# ------------------------------------------------------------------------------------------------- nodes


def _recall_count(ctx: Context) -> int:
    return graph_settings().memory_recall if ctx.recall is None else ctx.recall


async def recall(state: State, runtime: Runtime[Context]) -> dict:
    """Search the user's memories for the new message; report what was found (before any answer streams)."""
    ctx = runtime.context or Context()
    # The user's latest message, also when this run continues a turn (a frontend tool's result came back).
    message = next((m for m in reversed(state["messages"]) if isinstance(m, HumanMessage)), None)
    query = message.text if message is not None else ""
    count = _recall_count(ctx)
    memories = []
    if count and query.strip():
        backend = memory_backend(runtime.store)
        started = time.perf_counter()
        try:
            memories = await backend.search(ctx.user_id, query[: backend.limits.max_length], count)
        except MemorySearchDisabled:  # search is off: the newest memories are still the user's own context
            memories = (await backend.list(ctx.user_id, limit=min(count, 100))).items
        except MemoryStoreError as exc:  # the turn goes on without memories rather than failing
            log.warning("memory recall failed for user %s: %s", ctx.user_id, exc)
        record_recall(time.perf_counter() - started)
    recalled = [m.to_dict() for m in memories]
    runtime.stream_writer({"name": RECALLED_EVENT, "value": {"memories": recalled}})
    return {"recalled": recalled}


def _memory_prompt(recalled: list[dict]) -> str:
    if not recalled:
        return "\n\nYou remember nothing relevant about this user yet."
    lines = [f"- [{m['id']}] {m['content']}" + (f" (tags: {', '.join(m['tags'])})" if m.get("tags") else "")
             for m in recalled]
    return "\n\nWhat you remember about this user (id in brackets, for update_memory/delete_memory):\n" + \
        "\n".join(lines)


async def call_model(state: State, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context or Context()
    messages = state["messages"]
    system = SystemMessage(ctx.system_prompt + _memory_prompt(state.get("recalled") or [])
                           + client_context_prompt(ctx.client_context))
    model = chat_model(ctx.model, ctx.temperature, ctx.max_tokens)
    tools = offered_tools(TOOL_SCHEMAS, ctx)
    if turn_iterations(messages) >= ctx.max_iterations:
        system.content += "\n\nThe tool budget for this turn is used up: answer now from what you have."
        bound = model
    elif is_demo_model():
        # The embedded demo model cannot choose tools by itself (it needs tool_choice forced: see
        # graphs/agent.py), and forcing a memory tool on every turn would be worse than none: recall and auto-save
        # still give it memory.
        bound = model
    else:
        bound = model.bind_tools(tools)
    return await model_turn(bound, system, messages, ctx)


async def dispatch_tools(state: State, runtime: Runtime[Context]) -> dict:
    """Run the memory tool calls of the last model turn concurrently, each under a timeout."""
    ctx = runtime.context or Context()
    frontend = frontend_names(ctx)
    calls = [c for c in state["messages"][-1].tool_calls if c["name"] not in frontend]
    # A limit or a missing id (MemoryStoreError) is written for people: the model can tell the user.
    results = [run_tool(TOOLS.get(c["name"]), c, ctx.tool_timeout, plain_errors=(MemoryStoreError,)) for c in calls]
    return {"messages": list(await asyncio.gather(*results))}


def _parse_facts(text: str) -> list[str]:
    """The `memories` list of the extraction answer; anything unparsable means nothing to save."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        facts = json.loads(match.group(0)).get("memories", []) if match else []
    except (json.JSONDecodeError, AttributeError):
        return []
    return [f.strip() for f in facts if isinstance(f, str) and f.strip()][:MAX_AUTO_SAVED] \
        if isinstance(facts, list) else []


async def autosave(state: State, runtime: Runtime[Context]) -> dict:
    """Store the facts of the user's message worth keeping. Never fails the turn: the answer is already out."""
    ctx = runtime.context or Context()
    user_message = next((m for m in reversed(state["messages"]) if isinstance(m, HumanMessage)), None)
    if user_message is None or not user_message.text.strip():
        return {}
    known = [m["content"] for m in state.get("recalled") or []]
    prompt = [SystemMessage(EXTRACTION_PROMPT),
              HumanMessage("Already remembered:\n" + ("\n".join(f"- {k}" for k in known) or "(nothing)")
                           + f"\n\nThe user's latest message:\n{user_message.text}")]
    extractor = chat_model(ctx.extraction_model or ctx.model, temperature=0)
    if is_demo_model():  # worked examples and llama.cpp's JSON-schema grammar (graphs/demo_model.py)
        extractor = extractor.bind(extra_body={"json_schema": memory_extraction_schema(user_message.text)})
        prompt = memory_extraction_messages(user_message.text)
    extractor = extractor.with_config(tags=[TAG_NOSTREAM])
    saved = []
    try:
        facts = _parse_facts((await extractor.ainvoke(prompt)).text)
        backend = memory_backend(runtime.store)
        seen = {k.casefold() for k in known}
        for fact in facts:
            if fact.casefold() not in seen:
                seen.add(fact.casefold())
                saved.append((await backend.add(ctx.user_id, fact, ["auto"])).to_dict())
                record_memory("autosave")
    except Exception as exc:  # LLM down, a limit reached: log it; the user already has the answer
        log.warning("memory auto-save for user %s stopped: %s: %s", ctx.user_id, type(exc).__name__, exc)
    if saved:
        runtime.stream_writer({"name": SAVED_EVENT, "value": {"memories": saved}})
    return {}


# ------------------------------------------------------------------------------------------------- edges


def _saved_this_turn(state: State) -> bool:
    for message in reversed(state["messages"]):
        if isinstance(message, HumanMessage):
            return False
        if isinstance(message, ToolMessage) and message.name in WRITE_TOOLS and message.status != "error":
            return True
    return False


async def after_model(state: State, runtime: Runtime[Context]) -> str:
    ctx = runtime.context or Context()
    frontend = frontend_names(ctx)
    calls = getattr(state["messages"][-1], "tool_calls", None) or []
    if any(c["name"] not in frontend for c in calls):
        return "dispatch_tools"
    if calls:  # frontend calls pending: the run ends, the client runs them
        return END
    # The model already wrote to memory this turn: a second opinion on the same message would duplicate it.
    return "autosave" if ctx.auto_save and not _saved_this_turn(state) else END


# Input is the conversation only: the other keys are the graph's own, not state shared with AG-UI clients.
builder = StateGraph(State, context_schema=Context, input_schema=MessagesState)
builder.add_node(recall)
builder.add_node(call_model)
builder.add_node(dispatch_tools)
builder.add_node(autosave)
builder.add_edge(START, "recall")
builder.add_edge("recall", "call_model")
builder.add_conditional_edges("call_model", after_model, ["dispatch_tools", "autosave", END])
builder.add_conditional_edges("dispatch_tools", after_tools, ["call_model", END])
builder.add_edge("autosave", END)

graph = builder.compile(name="memory")
