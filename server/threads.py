"""Who owns each thread, and the lease that lets one run at a time touch it: one table, in loom's database.

    loom_threads(thread_id PRIMARY KEY, owner, created_at, lease_id, lease_until)

A thread belongs to the user of its first run. A run starts with one statement (`claim`) that both records
the owner of a new thread and takes the thread's lease, unless another user owns it (ThreadNotFound, told
apart from a missing thread by nothing) or a live lease holds it (ThreadBusy). The lease is renewed by one
task per process for every lease it holds, released when the run ends, and otherwise expires after
LOOM_RUN_LEASE_SECONDS, so a replica that dies (SIGKILL) frees its threads within that time. PostgreSQL is
the coordinator between replicas (row locks of the upsert); SQLite serialises writers itself, and its replicas
share one machine and so one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

log = logging.getLogger("loom.threads")


class ThreadNotFound(Exception):
    """The thread does not exist for this user: missing, or another user's (the same answer for both)."""


class ThreadBusy(Exception):
    """Another run holds the thread's lease."""


def is_outage(exc: BaseException) -> bool:
    """The database is unreachable or failing (as opposed to a bug): the request may be retried."""
    import sqlite3

    import psycopg

    return isinstance(exc, (psycopg.OperationalError, sqlite3.OperationalError, TimeoutError))


def not_found(thread_id: str) -> dict:
    """The one 404 body for a missing thread and for another user's thread (no existence oracle)."""
    return {"code": "thread_not_found", "message": f"No thread {thread_id!r} of yours."}


@dataclass
class Lease:
    """A run's hold on one thread. `release` is idempotent; the first call frees the thread."""

    thread_id: str
    lease_id: str
    registry: ThreadRegistry
    released: bool = field(default=False)

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.registry.held.pop(self.lease_id, None)
        try:
            await self.registry._release(self.thread_id, self.lease_id)
        except Exception as exc:  # the lease then expires on its own
            log.warning("releasing the lease on thread %s failed: %s", self.thread_id, exc)

    def release_soon(self) -> None:
        """Release without waiting (from a synchronous close callback)."""
        if not self.released:
            self.registry.spawn(self.release())


class ThreadRegistry(ABC):
    def __init__(self, lease_seconds: float):
        self.lease_seconds = lease_seconds
        self.held: dict[str, str] = {}  # lease_id -> thread_id, renewed together
        self._tasks: set[asyncio.Task] = set()
        self._renewer: asyncio.Task | None = None

    async def claim(self, thread_id: str, user_id: str) -> Lease:
        lease_id = uuid.uuid4().hex
        if not await self._claim(thread_id, user_id, lease_id):
            if await self.owner(thread_id) != user_id:
                raise ThreadNotFound(thread_id)
            raise ThreadBusy(thread_id)
        self.held[lease_id] = thread_id
        return Lease(thread_id, lease_id, self)

    async def assert_owner(self, thread_id: str, user_id: str) -> None:
        """For reads of an existing thread: only its owner may see it."""
        if await self.owner(thread_id) != user_id:
            raise ThreadNotFound(thread_id)

    async def assert_usable(self, thread_id: str, user_id: str) -> None:
        """Before reading a thread a run is about to start on: new, or the caller's own."""
        if await self.owner(thread_id) not in (None, user_id):
            raise ThreadNotFound(thread_id)

    def start(self) -> ThreadRegistry:
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        return self

    async def stop(self) -> None:
        """Stop renewing and free every lease still held (a run cut off by shutdown)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for lease_id, thread_id in list(self.held.items()):
            await Lease(thread_id, lease_id, self).release()

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a strong reference until done
        task.add_done_callback(self._tasks.discard)

    async def _renew_forever(self) -> None:
        # A third of the lease: two renewals may fail (a database hiccup) before another replica can take over.
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not self.held:
                continue
            try:
                await self._renew(list(self.held))
            except Exception as exc:
                log.warning("renewing %d run leases failed: %s", len(self.held), exc)

    @abstractmethod
    async def setup(self) -> None: ...

    @abstractmethod
    async def owner(self, thread_id: str) -> str | None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise when the database cannot be read."""

    @abstractmethod
    async def _claim(self, thread_id: str, user_id: str, lease_id: str) -> bool: ...

    @abstractmethod
    async def _release(self, thread_id: str, lease_id: str) -> None: ...

    @abstractmethod
    async def _renew(self, lease_ids: list[str]) -> None: ...


class PostgresThreads(ThreadRegistry):
    """On a small pool of its own whose sessions commit without waiting for the WAL flush (`open_threads`)."""

    SETUP = """
        CREATE TABLE IF NOT EXISTS loom_threads (
            thread_id text PRIMARY KEY,
            owner text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            lease_id text,
            lease_until timestamptz)"""
    # Threads stored before ownership existed belong to the user of their first checkpoint.
    ADOPT = """
        INSERT INTO loom_threads (thread_id, owner)
        SELECT DISTINCT ON (thread_id) thread_id, metadata->>'user_id' FROM checkpoints
        WHERE checkpoint_ns = '' AND metadata->>'user_id' IS NOT NULL
        ORDER BY thread_id, checkpoint_id
        ON CONFLICT (thread_id) DO NOTHING"""
    CLAIM = """
        INSERT INTO loom_threads AS t (thread_id, owner, lease_id, lease_until)
        VALUES (%s, %s, %s, now() + make_interval(secs => %s))
        ON CONFLICT (thread_id) DO UPDATE SET lease_id = excluded.lease_id, lease_until = excluded.lease_until
        WHERE t.owner = excluded.owner AND (t.lease_id IS NULL OR t.lease_until < now())
        RETURNING 1"""

    def __init__(self, pool, lease_seconds: float):
        super().__init__(lease_seconds)
        self.pool = pool

    async def setup(self) -> None:
        async with self.pool.connection() as conn:
            exists = await (await conn.execute("SELECT to_regclass('loom_threads') IS NOT NULL AS e")).fetchone()
            if _first(exists):
                return
            async with conn.transaction():
                # Replicas and workers start together: one creates the table, the others wait here.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('loom_threads'))")
                await conn.execute(self.SETUP)
                await conn.execute(self.ADOPT)

    async def owner(self, thread_id: str) -> str | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT owner FROM loom_threads WHERE thread_id = %s",
                                            (thread_id,))).fetchone()
        return _first(row)

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1 FROM loom_threads LIMIT 1")

    async def _claim(self, thread_id: str, user_id: str, lease_id: str) -> bool:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(self.CLAIM, (thread_id, user_id, lease_id, self.lease_seconds))
            return await cursor.fetchone() is not None

    async def _release(self, thread_id: str, lease_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE loom_threads SET lease_id = NULL, lease_until = NULL "
                               "WHERE thread_id = %s AND lease_id = %s", (thread_id, lease_id))

    async def _renew(self, lease_ids: list[str]) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE loom_threads SET lease_until = now() + make_interval(secs => %s) "
                               "WHERE lease_id = ANY(%s)", (self.lease_seconds, lease_ids))


class SqliteThreads(ThreadRegistry):
    """On a connection of its own (the checkpointer serialises use of its connection behind a lock)."""

    SETUP = """
        CREATE TABLE IF NOT EXISTS loom_threads (
            thread_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            created_at REAL NOT NULL,
            lease_id TEXT,
            lease_until REAL)"""
    ADOPT = """
        INSERT OR IGNORE INTO loom_threads (thread_id, owner, created_at)
        SELECT thread_id, json_extract(CAST(metadata AS TEXT), '$.user_id'), ? FROM checkpoints AS c
        WHERE checkpoint_ns = '' AND json_extract(CAST(metadata AS TEXT), '$.user_id') IS NOT NULL
          AND checkpoint_id = (SELECT MIN(checkpoint_id) FROM checkpoints
                               WHERE thread_id = c.thread_id AND checkpoint_ns = '')"""
    CLAIM = """
        INSERT INTO loom_threads (thread_id, owner, created_at, lease_id, lease_until) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (thread_id) DO UPDATE SET lease_id = excluded.lease_id, lease_until = excluded.lease_until
        WHERE loom_threads.owner = excluded.owner
          AND (loom_threads.lease_id IS NULL OR loom_threads.lease_until < excluded.created_at)
        RETURNING 1"""

    def __init__(self, conn, lease_seconds: float):
        super().__init__(lease_seconds)
        self.conn = conn

    async def setup(self) -> None:
        await self.conn.execute("BEGIN IMMEDIATE")  # workers start together: one creates and adopts
        try:
            exists = await self._one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'loom_threads'")
            if exists is None:
                await self.conn.execute(self.SETUP)
                await self.conn.execute(self.ADOPT, (time.time(),))
            await self.conn.execute("COMMIT")
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise

    async def owner(self, thread_id: str) -> str | None:
        return await self._one("SELECT owner FROM loom_threads WHERE thread_id = ?", (thread_id,))

    async def ping(self) -> None:
        await self._one("SELECT 1 FROM loom_threads LIMIT 1")

    async def _claim(self, thread_id: str, user_id: str, lease_id: str) -> bool:
        now = time.time()
        return await self._one(self.CLAIM, (thread_id, user_id, now, lease_id, now + self.lease_seconds)) is not None

    async def _release(self, thread_id: str, lease_id: str) -> None:
        await self.conn.execute("UPDATE loom_threads SET lease_id = NULL, lease_until = NULL "
                                "WHERE thread_id = ? AND lease_id = ?", (thread_id, lease_id))

    async def _renew(self, lease_ids: list[str]) -> None:
        await self.conn.execute("UPDATE loom_threads SET lease_until = ? "
                                "WHERE lease_id IN (SELECT value FROM json_each(?))",
                                (time.time() + self.lease_seconds, json.dumps(lease_ids)))

    async def _one(self, sql: str, params: tuple = ()):
        # One trip to the connection's thread (execute, fetch and close would be three, each waking it).
        rows = await self.conn.execute_fetchall(sql, params)
        return _first(rows[0]) if rows else None


def _first(row) -> object | None:
    if row is None:
        return None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


@contextlib.asynccontextmanager
async def open_threads(database_url: str, lease_seconds: float):
    """The thread registry beside the checkpointer: its own pool on PostgreSQL, its own connection on SQLite."""
    if database_url.startswith("sqlite:///"):
        import aiosqlite

        async with aiosqlite.connect(database_url.removeprefix("sqlite:///"), isolation_level=None) as conn:
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: no fsync per lease write
            registry: ThreadRegistry = SqliteThreads(conn, lease_seconds)
            await registry.setup()
            try:
                yield registry.start()
            finally:
                await registry.stop()
    else:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        # synchronous_commit=off took a claim from 3.5 ms to 0.2 ms (the WAL fsync). A database crash can lose
        # only the last fraction of a second of lease writes (leases expire anyway); a new thread's owner row is
        # flushed at the latest with the run's checkpoint, whose commit waits for all WAL written before it.
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row,
                  "options": "-c synchronous_commit=off"}
        async with AsyncConnectionPool(database_url, min_size=1, max_size=8, kwargs=kwargs, timeout=5,
                                       open=False) as pool:
            await pool.open(wait=True, timeout=10)
            registry = PostgresThreads(pool, lease_seconds)
            await registry.setup()
            try:
                yield registry.start()
            finally:
                await registry.stop()
