"""A plain StateGraph with no context schema; it reads an old-style configurable value."""

from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph

model = ChatOpenAI(model="gpt-4o-mini")


async def chat(state: MessagesState, config: RunnableConfig) -> dict:
    style = config["configurable"].get("style", "plain")
    reply = await model.ainvoke([{"role": "system", "content": f"Answer in a {style} style."}, *state["messages"]])
    return {"messages": [reply]}


graph = StateGraph(MessagesState).add_node(chat).add_edge(START, "chat").compile()
