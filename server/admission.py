"""Admitting a run, for every endpoint that starts one (AG-UI, and any other edge): in this order,

    shutting down  -> 503 server_shutting_down
    another user's -> 404 thread_not_found (the body of a missing thread)
    leased         -> 409 thread_busy
    database down  -> 503 database_unavailable
then prepare_run under the lease. The caller streams `prepared` and releases `prepared.lease` when the response
closes (stream_run itself releases it before the terminal event).
"""

from __future__ import annotations

import logging

from ag_ui.core import RunAgentInput

from loom.server.observe import refused
from loom.server.registry import GraphEntry
from loom.server.runs import PreparedRun, prepare_run
from loom.server.threads import ThreadBusy, ThreadNotFound, is_outage, not_found

log = logging.getLogger("loom.server")


class Refused(Exception):
    """A run refused before it started; nothing was changed."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


async def admit(state, entry: GraphEntry, run: RunAgentInput, user_id: str) -> PreparedRun:
    """Raises Refused, or InputError from prepare_run (the lease is released either way)."""
    if state.drain.draining:
        refused("server_shutting_down")
        raise Refused(503, "server_shutting_down", "This loom server is shutting down; retry the run.")
    try:
        lease = await state.threads.claim(run.thread_id, user_id)
    except ThreadNotFound:
        refused("thread_not_found")
        raise Refused(404, **not_found(run.thread_id)) from None
    except ThreadBusy:
        refused("thread_busy")
        raise Refused(409, "thread_busy", f"Thread {run.thread_id!r} already has a run in progress.") from None
    except Exception as exc:
        if is_outage(exc):
            raise _outage(run.thread_id, exc) from exc
        raise
    try:
        prepared = await prepare_run(entry, run, user_id)
    except BaseException as exc:
        await lease.release()
        if is_outage(exc):
            raise _outage(run.thread_id, exc) from exc
        raise
    prepared.lease, prepared.drain = lease, state.drain
    return prepared


def _outage(thread_id: str, exc: BaseException) -> Refused:
    refused("database_unavailable")
    log.warning("run on thread %s refused, the database failed: %s", thread_id, exc)
    return Refused(503, "database_unavailable", f"The database did not answer ({type(exc).__name__}); retry later.")
