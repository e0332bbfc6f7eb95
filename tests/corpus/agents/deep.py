"""A deepagents agent (planning, a virtual file system, sub-agents)."""

from deepagents import create_deep_agent
from langchain_openai import ChatOpenAI

from agents.tools import get_weather

agent = create_deep_agent(model=ChatOpenAI(model="gpt-4o-mini"), tools=[get_weather],
                          system_prompt="You are a careful research assistant.")
