"""The default memory backend: memories as items of LangGraph's store (SQLite, or PostgreSQL), one namespace per
user, `("memories", <user>)`, each item holding content, tags, times and its embedding.

Search and list work on a per-process index of the user's memories (`graphs.memory_search.UserIndex`): loading
10,000 memories from the store takes ~0.4 s; searching the loaded index ~0.4 ms lexical, ~19 ms hybrid, most of
it embedding the query on the CPU (bench/memory.py). The index must never serve a stale view, also with several
loom replicas on one PostgreSQL:

- every process that writes a user's memories keeps a counter in its own item of `("memories_meta", <user>)`,
  bumped after each write (item first, counter second);
- an index remembers the counters it reflects. Reading compares them with the stored ones (one small query): any
  other process's write changes its counter and the index is reloaded;
- this process's own writes replace its index with a patched copy (a search in flight keeps the old one) that
  advances only this process's counter, so a write by another process in the meantime still shows as a
  difference. No compare-and-set is needed: each counter has exactly one writer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from langgraph.store.base import PutOp

from loom.graphs.memory_search import MIN_SIMILARITY, SEMANTIC_CANDIDATES, UserIndex, embedder, pack, ranked, rrf
from loom.graphs.memory_store import (
    Memory,
    MemoryLimitExceeded,
    MemoryLimits,
    MemoryNotFound,
    MemoryPage,
    MemoryStoreError,
    new_memory_id,
    now_iso,
)
from loom.graphs.text_checks import valid_id

log = logging.getLogger("loom.memory")

NAMESPACE, META_NAMESPACE = "memories", "memories_meta"
_LOAD_PAGE = 10_000  # one query for most users: OFFSET paging re-sorts the namespace for every page
_CACHED_USERS = 256  # indexes kept per process; one with 10,000 memories is ~25 MB
_WRITER_TTL = 7 * 86400  # counters of processes silent this long are removed (restarts leave them behind)

_WRITER = uuid.uuid4().hex  # this process's counter key
_writes = itertools.count(1)
# One lock per (store, user) while an add is in flight; a lock nobody holds is collected.
_user_locks: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_RECOUNT_MARGIN = 32  # adds this close to the limit recount the store afterwards (other replicas)
_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # store -> OrderedDict[label, UserIndex]


def namespace_label(user_id: str) -> str:
    """The user id as a namespace label. Labels may not contain "." (the stores join labels with it), and a
    prefix search for ("memories", "a") must never reach ("memories", "a.b"): escaping "%" and "." keeps the
    mapping one-to-one and dot-free."""
    if not user_id:
        raise MemoryStoreError("memory operations need a user id")
    return user_id.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")


def _remove_all(index: UserIndex, ids: set[str]) -> UserIndex:
    for memory_id in ids:
        index = index.remove(memory_id)
    return index


def _from_value(key: str, value: dict) -> Memory:
    return Memory(id=key, content=value["content"], tags=list(value.get("tags") or []),
                  created_at=value.get("created_at", ""), updated_at=value.get("updated_at", ""))


class StoreMemoryBackend:
    """`MemoryBackend` over a LangGraph `BaseStore` (see the module docstring for the per-process index)."""

    def __init__(self, store: Any, limits: MemoryLimits | None = None, embedder: Any = "default"):
        """`embedder`: an `Embedder`, None for lexical search only, or "default" (from settings)."""
        self.store = store
        self.limits = limits or MemoryLimits()
        self._embedder = embedder
        self._cache: OrderedDict[str, UserIndex] = _caches.setdefault(store, OrderedDict())

    async def add(self, user_id: str, content: str, tags: list[str] | None = None) -> Memory:
        return (await self.add_many(user_id, [content], tags))[0]

    async def add_many(self, user_id: str, contents: list[str], tags: list[str] | None = None) -> list[Memory]:
        """Bulk add (imports, benchmarks): the same limits, all or nothing, embeddings in batches."""
        contents, tags = [self.limits.check_content(c) for c in contents], self.limits.check_tags(tags)
        label = namespace_label(user_id)
        most = self.limits.max_per_user
        lock = _user_locks.setdefault((id(self.store), label), asyncio.Lock())  # held below: not collected
        async with lock:  # count and write as one step within this process
            current = len((await self._index(label)).memories)
            if len(contents) == 1:
                self.limits.check_count(current)
            elif current + len(contents) > most:
                raise MemoryLimitExceeded(f"adding {len(contents)} memories to {current} would pass the limit of "
                                          f"{most} (LOOM_MEMORY_MAX_PER_USER)")
            memories = [Memory(new_memory_id(), c, list(tags), stamp, stamp)
                        for c in contents for stamp in [now_iso()]]
            await self._write(label, memories)
        if current + len(contents) > most - _RECOUNT_MARGIN:
            await self._undo_if_over_limit(label, memories)
        return memories

    async def _undo_if_over_limit(self, label: str, added: list[Memory]) -> None:
        """Near the limit another replica may have added at the same time: count what is stored now and take
        back this add if the two together passed the limit (both may take theirs back: never one too many)."""
        most = self.limits.max_per_user
        stored = await self.store.asearch((NAMESPACE, label), limit=most + len(added) + 1)
        if len(stored) <= most:
            return
        for memory in added:
            await self.store.adelete((NAMESPACE, label), memory.id)
        ids = {m.id for m in added}
        await self._bump(label, lambda index: _remove_all(index, ids))
        raise MemoryLimitExceeded(f"this user already has {most} memories; the limit is {most} "
                                  "(LOOM_MEMORY_MAX_PER_USER) — delete some first")

    async def update(self, user_id: str, memory_id: str, content: str | None = None,
                     tags: list[str] | None = None) -> Memory:
        label = namespace_label(user_id)
        memory = await self._get(label, memory_id)
        if content is not None:
            memory.content = self.limits.check_content(content)
        if tags is not None:
            memory.tags = self.limits.check_tags(tags)
        memory.updated_at = now_iso()
        await self._write(label, [memory])
        return memory

    async def get(self, user_id: str, memory_id: str) -> Memory:
        return await self._get(namespace_label(user_id), memory_id)

    async def list(self, user_id: str, limit: int = 20, offset: int = 0) -> MemoryPage:
        limit, offset = self.limits.check_page(limit, offset)
        memories = (await self._index(namespace_label(user_id))).memories
        return MemoryPage([replace(m) for m in memories[offset:offset + limit]], len(memories), limit, offset)

    async def search(self, user_id: str, query: str, limit: int = 5, semantic: bool = True) -> list[Memory]:
        """BM25 and, with an embedder, cosine similarity, fused by reciprocal rank. `semantic=False` ranks by BM25
        alone (what the hybrid is measured against)."""
        query, limit = self.limits.check_search(query, limit)
        index = await self._index(namespace_label(user_id))
        if not index.memories:
            return []
        rankings = [ranked(index.bm25().scores(query), 0.0)]
        model = self._model() if semantic else None
        if model is not None:
            try:
                matrix = await index.matrix(model)
                similarity = matrix @ (await model.embed([query]))[0]
                rankings.append(ranked(similarity, MIN_SIMILARITY, SEMANTIC_CANDIDATES))
            except Exception as exc:  # the embedder is an optional service: lexical results still answer
                log.warning("semantic memory search unavailable (%s: %s); lexical only", type(exc).__name__, exc)
        return [replace(index.memories[i], score=round(score, 4)) for i, score in rrf(rankings)[:limit]]

    async def delete(self, user_id: str, memory_id: str) -> None:
        label = namespace_label(user_id)
        await self._get(label, memory_id)
        await self.store.adelete((NAMESPACE, label), memory_id)
        await self._bump(label, lambda index: index.remove(memory_id))

    # ── internals ──

    def _model(self):
        return embedder() if self._embedder == "default" else self._embedder

    async def _get(self, label: str, memory_id: str) -> Memory:
        item = await self.store.aget((NAMESPACE, label), memory_id) if valid_id(memory_id) else None
        if item is None:
            raise MemoryNotFound(f"no memory with id {memory_id!r}")
        return _from_value(item.key, item.value)

    async def _write(self, label: str, memories: list[Memory]) -> None:
        vectors = await self._embed([m.content for m in memories])
        ops = []
        for row, memory in enumerate(memories):
            value = {"content": memory.content, "tags": memory.tags, "created_at": memory.created_at,
                     "updated_at": memory.updated_at}
            if vectors is not None:
                value["embedding"] = {"model": vectors[0], "vector": pack(vectors[1][row])}
            ops.append(PutOp((NAMESPACE, label), memory.id, value, index=False))
        await self.store.abatch(ops)

        def patch(index: UserIndex) -> UserIndex:
            for row, memory in enumerate(memories):
                index = index.put(replace(memory), (vectors[0], vectors[1][row]) if vectors is not None else None)
            return index

        await self._bump(label, patch)

    async def _embed(self, texts: list[str]) -> tuple[str, Any] | None:
        model = self._model()
        if model is None:
            return None
        try:
            return model.name, await model.embed(texts)
        except Exception as exc:  # stored without; embedded when an index loads them
            log.warning("could not embed memories (%s: %s)", type(exc).__name__, exc)
            return None

    async def _bump(self, label: str, patch) -> None:
        """After a write: advance this process's counter, then bring its own index along."""
        count = next(_writes)
        await self.store.aput((META_NAMESPACE, label), _WRITER, {"rev": count, "at": time.time()}, index=False)
        index = self._cache.get(label)
        if index is not None:
            index = self._cache[label] = patch(index)
            index.revision[_WRITER] = count
            stale = [k for k, at in index.written_at.items() if k != _WRITER and at < time.time() - _WRITER_TTL]
            for key in stale:  # the next read of every process sees the change and reloads: harmless
                await self.store.adelete((META_NAMESPACE, label), key)

    async def _revision(self, label: str) -> tuple[dict[str, int], dict[str, float]]:
        items = await self.store.asearch((META_NAMESPACE, label), limit=1000)
        return {i.key: i.value.get("rev") for i in items}, {i.key: i.value.get("at", 0.0) for i in items}

    async def _index(self, label: str) -> UserIndex:
        revision, written_at = await self._revision(label)
        index = self._cache.get(label)
        if index is not None and index.revision == revision:
            self._cache.move_to_end(label)
            return index
        items: dict[str, Any] = {}
        offset = 0
        while True:  # the counters were read first: a write landing meanwhile shows up as a difference next time
            page = await self.store.asearch((NAMESPACE, label), limit=_LOAD_PAGE, offset=offset)
            items.update((item.key, item.value) for item in page)
            if len(page) < _LOAD_PAGE:
                break
            offset += _LOAD_PAGE
        memories = sorted((_from_value(k, v) for k, v in items.items()),
                          key=lambda m: (m.created_at, m.id), reverse=True)
        vectors = {k: (v["embedding"]["model"], v["embedding"]["vector"]) for k, v in items.items()
                   if isinstance(v.get("embedding"), dict)}
        index = self._cache[label] = UserIndex(revision, memories, vectors, written_at=written_at)
        while len(self._cache) > _CACHED_USERS:
            self._cache.popitem(last=False)
        return index
