"""loom's app with the thread registry kept in process memory: the baseline of bench/team.py's lease cost.

Everything else is `loom serve` as shipped (same settings, database, graphs); only ownership and the run lease
skip the database, as the per-process guard before them did. Not for serving: it cannot coordinate replicas.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from loom.server.serving import worker_app
from loom.server.threads import ThreadRegistry


class InMemoryThreads(ThreadRegistry):
    def __init__(self, lease_seconds: float):
        super().__init__(lease_seconds)
        self.owners: dict[str, str] = {}
        self.leases: dict[str, str] = {}  # thread_id -> lease_id

    async def setup(self) -> None:
        return None

    async def owner(self, thread_id: str) -> str | None:
        return self.owners.get(thread_id)

    async def ping(self) -> None:
        return None

    async def _claim(self, thread_id: str, user_id: str, lease_id: str) -> bool:
        if self.owners.setdefault(thread_id, user_id) != user_id or thread_id in self.leases:
            return False
        self.leases[thread_id] = lease_id
        return True

    async def _release(self, thread_id: str, lease_id: str) -> None:
        if self.leases.get(thread_id) == lease_id:
            del self.leases[thread_id]

    async def _renew(self, lease_ids: list[str]) -> None:
        return None


def app() -> FastAPI:
    loom = worker_app()
    shipped = loom.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI):
        async with shipped(application):
            application.state.threads = InMemoryThreads(application.state.threads.lease_seconds)
            yield

    loom.router.lifespan_context = lifespan
    return loom
