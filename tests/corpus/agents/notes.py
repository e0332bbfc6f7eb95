"""A graph with custom state keys (a topic and notes) and a pydantic context schema."""

from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel


class State(MessagesState):
    topic: str
    notes: list[str]


class Context(BaseModel):
    tone: str = "friendly"


model = ChatOpenAI(model="gpt-4o-mini")


async def answer(state: State, runtime: Runtime[Context]) -> dict:
    system = f"Be {runtime.context.tone}. Topic: {state.get('topic', 'anything')}."
    reply = await model.ainvoke([{"role": "system", "content": system}, *state["messages"]])
    return {"messages": [reply]}


def take_note(state: State) -> dict:
    last = state["messages"][-1].text
    return {"notes": [*state.get("notes", []), last[:40]]}


builder = StateGraph(State, context_schema=Context)
builder.add_node(answer)
builder.add_node(take_note)
builder.add_edge(START, "answer")
builder.add_edge("answer", "take_note")
builder.add_edge("take_note", END)
graph = builder.compile()
