"""Checkpointer and store from LOOM_DATABASE_URL: an embedded SQLite file, or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore


@asynccontextmanager
async def open_persistence(database_url: str) -> AsyncIterator[tuple[BaseCheckpointSaver, BaseStore]]:
    if database_url.startswith(("postgresql://", "postgres://")):
        async with _postgres(database_url) as pair:
            yield pair
    elif database_url.startswith("sqlite:///"):
        async with _sqlite(database_url.removeprefix("sqlite:///")) as pair:
            yield pair
    else:
        raise ValueError(f"LOOM_DATABASE_URL must start with sqlite:/// or postgresql://, got {database_url!r}")


@asynccontextmanager
async def _sqlite(path: str):
    from pathlib import Path

    import aiosqlite
    from langgraph.store.sqlite.aio import AsyncSqliteStore

    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets readers (state reads) proceed while a run writes checkpoints.
    async with aiosqlite.connect(path, isolation_level=None) as saver_conn, \
            aiosqlite.connect(path, isolation_level=None) as store_conn:
        for conn in (saver_conn, store_conn):
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=5000")
        saver = _sqlite_saver(saver_conn)
        store = AsyncSqliteStore(store_conn)
        await saver.setup()
        await store.setup()
        yield saver, store


@asynccontextmanager
async def _postgres(url: str):
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.store.postgres.aio import AsyncPostgresStore
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(url, min_size=1, max_size=20, kwargs=kwargs, open=False) as pool:
        await pool.open(wait=True, timeout=10)
        saver = AsyncPostgresSaver(pool)
        store = AsyncPostgresStore(pool)
        async with pool.connection() as conn:
            # Workers and replicas start together; their migrations must not race (duplicate-key errors).
            await conn.execute("SELECT pg_advisory_lock(hashtext('loom_setup'))")
            try:
                await saver.setup()
                await store.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext('loom_setup'))")
        yield saver, store


def _sqlite_saver(conn) -> BaseCheckpointSaver:
    """LangGraph's AsyncSqliteSaver, with the two calls of every run (read the thread's latest checkpoint, write
    the new one) made in one trip each to aiosqlite's connection thread instead of 3-4 (cursor, execute, fetch,
    commit, close).

    Why: each trip wakes that thread and then the event loop; at 15 trips per run those wake-ups were a
    measurable share of a run's CPU (bench/team.py). The SQL is LangGraph's own: its synchronous SqliteSaver runs
    on the same sqlite3 connection, in the thread that owns it. Needs aiosqlite's `_execute` (run a function in
    the connection's thread); without it the stock saver is used as it is.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    class OneTripSqliteSaver(AsyncSqliteSaver):
        _sync: SqliteSaver | None = None

        async def setup(self) -> None:
            await super().setup()
            if self._sync is None:
                self._sync = SqliteSaver(self.conn._conn, serde=self.serde)
                self._sync.is_setup, self._sync._has_task_path = True, self._has_task_path

        async def aget_tuple(self, config):
            await self.setup()
            async with self.lock:
                return await self.conn._execute(self._sync.get_tuple, config)

        async def aput(self, config, checkpoint, metadata, new_versions):
            await self.setup()
            async with self.lock:
                return await self.conn._execute(self._sync.put, config, checkpoint, metadata, new_versions)

    if not callable(getattr(conn, "_execute", None)) or not hasattr(type(conn), "_conn"):
        return AsyncSqliteSaver(conn)
    return OneTripSqliteSaver(conn)
