"""SIGTERM as a drain: refuse new runs at once, give runs in flight a grace period, then end them cleanly.

uvicorn alone would close the listening socket (new clients see "connection refused", not a reason) and wait
for open streams without bound. Here SIGTERM first flips `draining` (new runs get 503 server_shutting_down,
/ready turns 503 so a load balancer stops routing here), waits up to LOOM_SHUTDOWN_GRACE_SECONDS for the runs
in flight, cancels those left (each ends with RUN_ERROR SERVER_SHUTTING_DOWN, see server/runs.py), and only
then lets uvicorn shut down: lifespan teardown releases leases and flushes OpenPipe, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger("loom.shutdown")

SHUTDOWN_CODE = "SERVER_SHUTTING_DOWN"
SHUTDOWN_MESSAGE = "The server is shutting down; retry the run (another replica may take it)."


class Drain:
    def __init__(self, grace_seconds: float):
        self.grace_seconds = grace_seconds
        self.draining = False  # SIGTERM received: no new runs
        self.stopping = False  # grace over: runs still in flight are being cancelled
        self._runs: set[asyncio.Task] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count the current task (the one streaming a run) as a run in flight."""
        task = asyncio.current_task()
        assert task is not None
        self._runs.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            self._runs.discard(task)
            if not self._runs:
                self._idle.set()

    def install(self) -> bool:
        """Take over SIGTERM from the uvicorn server running this app; False when there is none (tests)."""
        previous = signal.getsignal(signal.SIGTERM)
        server = getattr(previous, "__self__", None)
        if server is None or not hasattr(server, "should_exit"):
            return False
        loop = asyncio.get_running_loop()

        def exit_uvicorn() -> None:
            # Set the flag rather than call uvicorn's handler: that one re-raises SIGTERM after shutdown,
            # and the process would die of the signal instead of exiting 0.
            server.should_exit = True

        signal.signal(signal.SIGTERM, lambda sig, frame: loop.call_soon_threadsafe(self.begin, exit_uvicorn))
        return True

    def begin(self, then: Callable[[], None]) -> None:
        if self.draining:
            return
        self.draining = True
        log.warning("SIGTERM: refusing new runs; %d in flight get up to %.0f s", len(self._runs), self.grace_seconds)
        self._task = asyncio.get_running_loop().create_task(self._drain(then))

    async def _drain(self, then: Callable[[], None]) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self.grace_seconds)
        except TimeoutError:
            self.stopping = True
            log.warning("grace period over: ending %d runs with %s", len(self._runs), SHUTDOWN_CODE)
            for task in list(self._runs):
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5)
        then()
