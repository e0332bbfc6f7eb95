"""An agent whose factory holds a session open for each run, the way MCP tool servers are used with LangGraph.

The factory is an async context manager taking the run's config and a ServerRuntime, as LangGraph's server
calls it: the model is the one the run's config names, only a run (not a schema read) opens the session, and
the session closes when the run ends.
"""

import contextlib
import json
import os

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent
from langgraph_sdk.runtime import ServerRuntime


def _log(event: str, thread: str | None) -> None:
    if path := os.environ.get("CORPUS_SESSION_LOG"):  # set by the tests, to see when sessions open and close
        with open(path, "a") as log:
            log.write(json.dumps({"event": event, "thread": thread}) + "\n")


@contextlib.asynccontextmanager
async def make_graph(config: RunnableConfig, runtime: ServerRuntime):
    session = {"open": False}

    @tool
    def session_status() -> str:
        """Whether this run's session is open."""
        return "open" if session["open"] else "closed"

    agent = create_react_agent(ChatOpenAI(model=config["configurable"].get("model", "gpt-4o-mini")),
                               tools=[session_status], prompt="You are a helpful assistant.")
    if runtime.execution_runtime is None:  # the server reads the graph's shape: no session
        yield agent
        return
    thread = config["configurable"].get("thread_id")
    if config["configurable"].get("session") == "refused":  # a session server that is down
        raise ConnectionRefusedError("the session server refused the connection")
    session["open"] = True
    _log("open", thread)
    try:
        yield agent
    finally:
        session["open"] = False
        _log("close", thread)
