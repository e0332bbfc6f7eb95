"""Per-user memories in Letta archival memory (LOOM_MEMORY_BACKEND=letta), through letta-client.

Each user's memories live in a Letta agent of their own, found by the tags `loom-memory` + `loom-user:<user id>`
and created on the user's first add: an operation can only ever reach one user's archive. Archival memory has
no update, no fetch by id and no count, so:

- a memory's id is a loom id kept in a `loom:id:<id>` tag; an update inserts the new passage (with the original
  `created_at`) and then deletes the old one, so the id survives. Passages the agent wrote itself (no such tag)
  appear with their passage id. A `loom:updated:<iso>` tag records the last change.
- get, list (newest first, with the total) and the count limit read the user's whole archive, in pages; its
  size is bounded by LOOM_MEMORY_MAX_PER_USER.
- search is Letta's own (embedding-based), but Letta returns its nearest neighbours up to `top_k` however
  unrelated, and no score. So loom scores each candidate itself (`relevance`: the share of the query's terms the
  passage contains, or, with an embedder configured, the cosine of their embeddings if higher) and drops those
  below LOOM_LETTA_MEMORY_MIN_SCORE: recall must not present an unrelated passage as a memory.
"""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import letta_client
import numpy as np

from loom.adapters.letta.client import letta
from loom.adapters.letta.config import letta_settings
from loom.adapters.letta.errors import from_letta
from loom.graphs.memory_search import embedder, tokenize
from loom.graphs.memory_store import (
    Memory,
    MemoryBackendUnavailable,
    MemoryLimits,
    MemoryNotFound,
    MemoryPage,
    MemoryStoreError,
    new_memory_id,
    now_iso,
)

MEMORY_TAG, USER_TAG = "loom-memory", "loom-user:"
_ID, _UPDATED, _RESERVED = "loom:id:", "loom:updated:", "loom:"
_PAGE = 100
_CANDIDATES = 3  # Letta returns this many times the asked-for results: some fail the relevance threshold
_agents: dict[tuple[str, str], str] = {}  # (base url, user id) -> the user's memory agent
_locks: dict[str, asyncio.Lock] = {}  # per user: the count check and the write of an add happen together


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.replace(tzinfo=UTC).isoformat()
    try:
        return _iso(datetime.fromisoformat(str(value)))
    except ValueError:
        return None


def _memory(passage_id: str, text: str, tags: list[str] | None, created: Any) -> Memory:
    tags = tags or []
    memory_id = next((t[len(_ID):] for t in tags if t.startswith(_ID)), passage_id)
    created_at = _iso(created) or ""
    updated_at = next((t[len(_UPDATED):] for t in tags if t.startswith(_UPDATED)), created_at)
    return Memory(memory_id, text, [t for t in tags if not t.startswith(_RESERVED)], created_at, updated_at)


class LettaMemoryBackend:
    def __init__(self, limits: MemoryLimits | None = None, *, base_url: str | None = None,
                 api_key: str | None = None):
        self.limits = limits or MemoryLimits()
        self._base_url = base_url or letta_settings().letta_base_url
        self._api_key = api_key

    # ------------------------------------------------------------------------------------------ operations

    async def add(self, user_id: str, content: str, tags: list[str] | None = None) -> Memory:
        content, tags = self.limits.check_content(content), self._tags(tags)
        async with self._lock(user_id), self._calls():
            agent = await self._agent(user_id, create=True)
            self.limits.check_count(len(await self._memories(agent)))
            memory_id, stamp = new_memory_id(), now_iso()
            await self._insert(agent, Memory(memory_id, content, tags, stamp, stamp))
        return Memory(memory_id, content, tags, stamp, stamp)

    async def update(self, user_id: str, memory_id: str, content: str | None = None,
                     tags: list[str] | None = None) -> Memory:
        content = None if content is None else self.limits.check_content(content)
        tags = None if tags is None else self._tags(tags)
        async with self._lock(user_id), self._calls():
            agent, current, passages = await self._find(user_id, memory_id)
            memory = Memory(current.id, current.content if content is None else content,
                            current.tags if tags is None else tags, current.created_at, now_iso())
            await self._insert(agent, memory)  # first the new version: a failure in between leaves both, not none
            for passage_id in passages:
                await self._client().agents.passages.delete(passage_id, agent_id=agent)
        return memory

    async def get(self, user_id: str, memory_id: str) -> Memory:
        async with self._calls():
            return (await self._find(user_id, memory_id))[1]

    async def list(self, user_id: str, limit: int = 20, offset: int = 0) -> MemoryPage:
        limit, offset = self.limits.check_page(limit, offset)
        async with self._calls():
            agent = await self._agent(user_id)
            memories = await self._memories(agent) if agent else []
        memories.sort(key=lambda m: (m.created_at, m.id), reverse=True)
        return MemoryPage(memories[offset:offset + limit], len(memories), limit, offset)

    async def search(self, user_id: str, query: str, limit: int = 5) -> list[Memory]:
        query, limit = self.limits.check_search(query, limit)
        async with self._calls():
            agent = await self._agent(user_id)
            if agent is None:
                return []
            found = await self._client().agents.passages.search(agent, query=query,
                                                                 top_k=min(limit * _CANDIDATES, 100))
            scores = await relevance(query, [r.content for r in found.results])
            floor = letta_settings().letta_memory_min_score
            kept = [(r, score) for r, score in zip(found.results, scores, strict=True) if score >= floor]
            results = [r for r, _ in kept]
            created: dict[str, Any] = {r.id: r.timestamp for r in results}
            if any(_iso(t) is None for t in created.values()):  # a timestamp in the agent's own format
                created |= {p.id: p.created_at for p in await self._passages(agent) if p.id in created}
        out: list[Memory] = []
        for result, score in sorted(kept, key=lambda rs: -rs[1]):  # stable: Letta's order among equals
            memory = _memory(result.id, result.content, result.tags, created[result.id])
            if memory.id not in {m.id for m in out}:
                memory.score = round(score, 4)
                out.append(memory)
        return out[:limit]

    async def delete(self, user_id: str, memory_id: str) -> None:
        async with self._lock(user_id), self._calls():
            agent, _memory_, passages = await self._find(user_id, memory_id)
            for passage_id in passages:
                await self._client().agents.passages.delete(passage_id, agent_id=agent)

    # ---------------------------------------------------------------------------------------------- helpers

    def _client(self) -> letta_client.AsyncLetta:
        return letta(self._base_url, self._api_key)

    def _tags(self, tags: list[str] | None) -> list[str]:
        tags = self.limits.check_tags(tags)
        if reserved := [t for t in tags if t.startswith(_RESERVED)]:
            raise MemoryStoreError(f"tag {reserved[0]!r}: tags starting with {_RESERVED!r} are reserved")
        return tags

    def _lock(self, user_id: str) -> asyncio.Lock:
        return _locks.setdefault(user_id, asyncio.Lock())

    @asynccontextmanager
    async def _calls(self):
        """Letta failures as MemoryBackendUnavailable (502), with the specific reason."""
        try:
            yield
        except letta_client.APIError as exc:
            if isinstance(exc, letta_client.NotFoundError):  # the cached agent may have been deleted
                for key in [k for k in _agents if k[0] == self._base_url]:
                    _agents.pop(key, None)
            raise MemoryBackendUnavailable(from_letta(exc, base_url=self._base_url, what="memory request").message) \
                from exc

    async def _agent(self, user_id: str, create: bool = False) -> str | None:
        if not user_id:
            raise MemoryStoreError("memory operations need a user id")
        key = (self._base_url, user_id)
        if key in _agents:
            return _agents[key]
        tags = [MEMORY_TAG, USER_TAG + user_id]
        page = await self._client().agents.list(tags=tags, match_all_tags=True, limit=1)
        if page.items:
            _agents[key] = page.items[0].id
        elif create:
            settings = letta_settings()
            digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
            agent = await self._client().agents.create(
                name=f"loom-memory-{digest}", tags=tags, description="loom: one user's long-term memories",
                model=settings.letta_memory_model, embedding=settings.letta_memory_embedding,
                include_base_tools=False, memory_blocks=[])
            _agents[key] = agent.id
        return _agents.get(key)

    async def _passages(self, agent: str) -> list:
        out, after = [], None
        while True:
            page = await self._client().agents.passages.list(agent, limit=_PAGE, ascending=True,
                                                              **({"after": after} if after else {}))
            out += page
            if len(page) < _PAGE:
                return out
            after = page[-1].id

    async def _memories(self, agent: str) -> list[Memory]:
        """One per memory id (an interrupted update can leave two passages: the newest version wins)."""
        latest: dict[str, Memory] = {}
        for p in await self._passages(agent):
            memory = _memory(p.id, p.text, p.tags, p.created_at)
            if memory.id not in latest or memory.updated_at >= latest[memory.id].updated_at:
                latest[memory.id] = memory
        return list(latest.values())

    async def _find(self, user_id: str, memory_id: str) -> tuple[str, Memory, list[str]]:
        """(agent, the memory, its passage ids) — MemoryNotFound unless it is this user's."""
        agent = await self._agent(user_id)
        matches = [(p, _memory(p.id, p.text, p.tags, p.created_at))
                   for p in (await self._passages(agent) if agent else [])]
        matches = [(p, m) for p, m in matches if m.id == memory_id]
        if not matches:
            raise MemoryNotFound(f"no memory {memory_id!r} for this user")
        newest = max((m for _, m in matches), key=lambda m: m.updated_at)
        return agent, newest, [p.id for p, _ in matches]

    async def _insert(self, agent: str, memory: Memory) -> None:
        await self._client().agents.passages.create(
            agent, text=memory.content, created_at=memory.created_at,
            tags=[*memory.tags, _ID + memory.id, _UPDATED + memory.updated_at])


async def relevance(query: str, texts: list[str]) -> list[float]:
    """How related each text is to the query, 0..1: the share of the query's terms it contains, or the cosine of
    their embeddings when an embedder is configured and that is higher."""
    terms = set(tokenize(query))
    scores = [len(terms & set(tokenize(text))) / len(terms) if terms else 0.0 for text in texts]
    model = embedder()
    if model is None or not texts:
        return scores
    vectors = await model.embed([query, *texts])
    cosines = np.asarray(vectors[1:]) @ np.asarray(vectors[0])
    return [max(lexical, float(cosine)) for lexical, cosine in zip(scores, cosines, strict=True)]
