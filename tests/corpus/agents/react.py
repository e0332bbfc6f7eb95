"""A ReAct agent from langgraph.prebuilt, exported as LangGraph's docs show."""

from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent

from agents.tools import get_weather

graph = create_react_agent(ChatOpenAI(model="gpt-4o-mini"), tools=[get_weather],
                           prompt="You are a helpful assistant.")
