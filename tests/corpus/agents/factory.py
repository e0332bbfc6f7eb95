"""A graph made by an async factory that takes a RunnableConfig, as LangGraph's server calls it."""

from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent

from agents.tools import add


async def make_graph(config: RunnableConfig):
    model_name = config.get("configurable", {}).get("model", "gpt-4o-mini")
    return create_react_agent(ChatOpenAI(model=model_name), tools=[add])
