"""The reference peer: ag-ui-langgraph 0.0.47 with its defaults, wrapping a one-node graph.

`ChatOpenAI(streaming=True)` against BENCH_LLM_BASE_URL, `MessagesState`, compiled with an `InMemorySaver`
(ag-ui-langgraph requires a checkpointer), served by `add_langgraph_fastapi_endpoint` at POST /agent.

    BENCH_LLM_BASE_URL=http://127.0.0.1:8100/v1 .venv/bin/python -m uvicorn bench.agui_langgraph_app:app --port 8200
"""

from __future__ import annotations

import os

from ag_ui_langgraph import LangGraphAgent, add_langgraph_fastapi_endpoint
from fastapi import FastAPI
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

model = ChatOpenAI(
    model=os.environ.get("BENCH_LLM_MODEL", "bench-model"),
    base_url=os.environ["BENCH_LLM_BASE_URL"],
    api_key="not-needed",
    streaming=True,
)


async def chat(state: MessagesState) -> dict:
    return {"messages": [await model.ainvoke(state["messages"])]}


builder = StateGraph(MessagesState)
builder.add_node("chat", chat)
builder.add_edge(START, "chat")
builder.add_edge("chat", END)
graph = builder.compile(checkpointer=InMemorySaver())

app = FastAPI(title="ag-ui-langgraph bench peer")
add_langgraph_fastapi_endpoint(app, LangGraphAgent(name="agent", graph=graph), "/agent")
