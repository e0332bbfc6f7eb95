"""Bounds on one run that hold whatever the model sends: output tokens, and the model requests in flight.

The server opens a `RunBudget` per run (`run_budget`); `ChatModel` streams charge it. Graphs run without one
(LangGraph Studio, unit tests): then nothing is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class RunLimitExceeded(Exception):
    """A run passed one of its bounds; `run_error_code` is the RUN_ERROR code the client sees."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.run_error_code = code


class RunBudget:
    def __init__(self, max_output_tokens: int):
        self.max_output_tokens = max_output_tokens
        self.output_tokens = 0
        self.model_tasks: set[asyncio.Task] = set()

    def charge(self, tokens: int = 1) -> None:
        self.output_tokens += tokens
        if self.output_tokens > self.max_output_tokens:
            raise RunLimitExceeded(
                "RUN_TOKEN_LIMIT", f"The run passed its limit of {self.max_output_tokens} output tokens "
                "(LOOM_RUN_MAX_OUTPUT_TOKENS, or forwardedProps.context.max_output_tokens).")

    @contextmanager
    def model_request(self) -> Iterator[None]:
        """Marks the current task as streaming from the model, so that `cancel_model_requests` reaches it."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self.model_tasks.add(task)
        try:
            yield
        finally:
            self.model_tasks.discard(task)

    def cancel_model_requests(self) -> int:
        """Cancel every model request still streaming (the client left): the upstream connection closes now,
        not when the graph's own cancellation reaches it. Returns how many were cancelled."""
        tasks = [t for t in self.model_tasks if not t.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)


current_budget: ContextVar[RunBudget | None] = ContextVar("loom_run_budget", default=None)
