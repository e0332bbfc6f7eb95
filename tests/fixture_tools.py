"""Extra tools the test servers load through LOOM_EXTRA_TOOLS (the documented way to add tools)."""

import asyncio
import json
import time

from langchain_core.tools import tool


@tool
async def slow_lookup(seconds: float) -> str:
    """Look something up slowly (takes `seconds`). Reports when it ran, so tests can see overlap."""
    started = time.monotonic()  # compared only with other calls in this process; immune to clock steps
    await asyncio.sleep(seconds)
    return json.dumps({"started": started, "ended": time.monotonic()})


@tool
def flaky_service(query: str) -> str:
    """A service that is down."""
    raise ConnectionError(f"service unavailable for {query!r}")


@tool
def delete_records(table: str) -> str:
    """Delete every record of a table (asks the user first)."""
    return f"deleted all records of {table}"


delete_records.metadata = {"needs_confirmation": True}

TOOLS = [slow_lookup, flaky_service, delete_records]
