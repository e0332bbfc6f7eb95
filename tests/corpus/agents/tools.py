"""Tools the corpus agents share, written as LangChain documents tools."""

from langchain_core.tools import tool


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"It is always sunny in {city}."


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b
