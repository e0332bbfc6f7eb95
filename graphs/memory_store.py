"""Per-user long-term memory: the backend interface (`MemoryBackend`), its values, limits and errors.

Every operation takes the user id first; a backend keeps each user's memories in a space no other user id can
reach (the store backend uses the namespace `("memories", user_id)`). The server resolves the user id from the
authenticated key, so isolation holds as long as callers pass that id through unchanged.

Backends: `store` (default: `graphs.memory_store_backend.StoreMemoryBackend`, LangGraph's store — SQLite, or
PostgreSQL from LOOM_DATABASE_URL) and `letta` (`adapters.letta.memory.LettaMemoryBackend`, a Letta agent's
archival memory). `memory_backend.py` picks one; both enforce the same limits through `MemoryLimits` (a
backend's constructor takes one: `StoreMemoryBackend(store, limits)`, `LettaMemoryBackend(limits)`).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from loom.graphs.config import graph_settings
from loom.graphs.text_checks import is_text

MAX_PAGE = 100  # list() never returns more than this many memories at once


# ── values ────────────────────────────────────────────────────────────────────────────────────────────────


@dataclass
class Memory:
    id: str
    content: str
    tags: list[str] = field(default_factory=list)
    created_at: str = ""  # ISO 8601, UTC
    updated_at: str = ""
    score: float | None = None  # set by search(): higher is more relevant

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.score is None:
            del data["score"]
        return data


@dataclass
class MemoryPage:
    items: list[Memory]
    total: int  # the user's memory count, not the page's
    limit: int
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"items": [m.to_dict() for m in self.items], "total": self.total, "limit": self.limit,
                "offset": self.offset}


# ── errors: each names the limit or the reason, and carries the HTTP status the REST API answers with ──────


class MemoryStoreError(Exception):
    status = 400
    code = "memory_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class MemoryNotFound(MemoryStoreError):
    status = 404
    code = "memory_not_found"


class MemoryLimitExceeded(MemoryStoreError):
    """A configured limit was hit: too many memories, content too long, or a bad page request."""

    status = 422
    code = "memory_limit"


class MemoryInvalid(MemoryStoreError):
    """Input that is not text (a NUL, a lone surrogate): no store can keep it."""

    status = 422
    code = "invalid_input"


class MemorySearchDisabled(MemoryStoreError):
    status = 403
    code = "memory_search_disabled"


class MemoryBackendUnavailable(MemoryStoreError):
    """The backend's service (e.g. the Letta server) could not be reached or refused the request."""

    status = 502
    code = "memory_backend_unavailable"


# ── limits, shared by every backend so they answer the same way ──────────────────────────────────────────


@dataclass(frozen=True)
class MemoryLimits:
    max_per_user: int = 1000
    max_length: int = 2000
    max_tags: int = 16
    max_tag_length: int = 64
    search_enabled: bool = True

    @classmethod
    def from_settings(cls) -> MemoryLimits:
        s = graph_settings()
        return cls(max_per_user=s.memory_max_per_user, max_length=s.memory_max_length,
                   search_enabled=s.memory_search)

    def check_content(self, content: str) -> str:
        content = check_text((content or "").strip(), "memory content")
        if not content:
            raise MemoryLimitExceeded("memory content is empty")
        if len(content) > self.max_length:
            raise MemoryLimitExceeded(
                f"memory content is {len(content)} characters; the limit is {self.max_length} "
                "(LOOM_MEMORY_MAX_LENGTH)")
        return content

    def check_tags(self, tags: list[str] | None) -> list[str]:
        tags = [check_text(t.strip(), "a tag") for t in (tags or []) if t and t.strip()]
        if len(tags) > self.max_tags:
            raise MemoryLimitExceeded(f"{len(tags)} tags; the limit is {self.max_tags} tags per memory")
        for tag in tags:
            if len(tag) > self.max_tag_length:
                raise MemoryLimitExceeded(f"tag {tag[:20]!r}… is longer than {self.max_tag_length} characters")
        return list(dict.fromkeys(tags))  # de-duplicated, order kept

    def check_count(self, current: int) -> None:
        if current >= self.max_per_user:
            raise MemoryLimitExceeded(
                f"this user already has {current} memories; the limit is {self.max_per_user} "
                "(LOOM_MEMORY_MAX_PER_USER) — delete some first")

    def check_page(self, limit: int, offset: int) -> tuple[int, int]:
        if limit < 1 or limit > MAX_PAGE:
            raise MemoryLimitExceeded(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        if offset < 0:
            raise MemoryLimitExceeded(f"offset must be 0 or more, got {offset}")
        return limit, offset

    def check_search(self, query: str, limit: int) -> tuple[str, int]:
        if not self.search_enabled:
            raise MemorySearchDisabled("memory search is turned off on this server (LOOM_MEMORY_SEARCH=false)")
        query = check_text((query or "").strip(), "the search query")
        if not query:
            raise MemoryLimitExceeded("search query is empty")
        if len(query) > self.max_length:
            raise MemoryLimitExceeded(f"search query is longer than {self.max_length} characters")
        if limit < 1 or limit > MAX_PAGE:
            raise MemoryLimitExceeded(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        return query, limit


def check_text(value: str, what: str) -> str:
    if not is_text(value):
        raise MemoryInvalid(f"{what} contains a NUL character or a lone UTF-16 surrogate, which is not valid text")
    return value


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def new_memory_id() -> str:
    return uuid.uuid4().hex


# ── the interface ─────────────────────────────────────────────────────────────────────────────────────────


@runtime_checkable
class MemoryBackend(Protocol):
    """Per-user memory operations. Errors are `MemoryStoreError` subclasses (never another user's data)."""

    limits: MemoryLimits

    async def add(self, user_id: str, content: str, tags: list[str] | None = None) -> Memory:
        """Store a new memory. MemoryLimitExceeded: too long, too many tags, or the user is at max_per_user."""
        ...

    async def update(self, user_id: str, memory_id: str, content: str | None = None,
                     tags: list[str] | None = None) -> Memory:
        """Change content and/or tags (None leaves a field as is); bumps updated_at. MemoryNotFound if absent."""
        ...

    async def get(self, user_id: str, memory_id: str) -> Memory:
        """One memory. MemoryNotFound if it does not exist for this user."""
        ...

    async def list(self, user_id: str, limit: int = 20, offset: int = 0) -> MemoryPage:
        """Newest first. limit in 1..100, offset >= 0 (else MemoryLimitExceeded); total is the user's count."""
        ...

    async def search(self, user_id: str, query: str, limit: int = 5) -> list[Memory]:
        """Best first, each with `score`. MemorySearchDisabled when search is turned off."""
        ...

    async def delete(self, user_id: str, memory_id: str) -> None:
        """Remove one memory. MemoryNotFound if it does not exist for this user."""
        ...
