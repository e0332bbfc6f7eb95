"""LangChain 1.x create_agent with a TypedDict context schema."""

from typing import TypedDict

from langchain.agents import create_agent

from agents.tools import get_weather


class Context(TypedDict, total=False):
    units: str


agent = create_agent(model="openai:gpt-4o-mini", tools=[get_weather], system_prompt="You are a weather bot.",
                     context_schema=Context)
