"""Asks the user a free-text question with interrupt(), then answers with it."""

from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import interrupt

model = ChatOpenAI(model="gpt-4o-mini")


class State(MessagesState):
    city: str
    units: str  # optional: a client may set it in the shared state


def ask(state: State) -> dict:
    city = interrupt("Which city?")
    return {"city": city}


async def answer(state: State) -> dict:
    units = f" Units: {state['units']}." if state.get("units") else ""
    told = f"The city is {state['city']}.{units}"
    reply = await model.ainvoke([*state["messages"], {"role": "user", "content": told}])
    return {"messages": [reply]}


builder = StateGraph(State)
builder.add_node(ask)
builder.add_node(answer)
builder.add_edge(START, "ask")
builder.add_edge("ask", "answer")
builder.add_edge("answer", END)
graph = builder.compile()
