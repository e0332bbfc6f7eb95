"""Which memory backend serves a run: the one place that knows both (LOOM_MEMORY_BACKEND).

The backends import only the interface in `memory_store.py`; choosing between them happens here, where the
memory graph and the server's `/memories` API ask for one.
"""

from __future__ import annotations

from typing import Any

from loom.graphs.config import graph_settings
from loom.graphs.memory_store import MemoryBackend, MemoryBackendUnavailable, MemoryLimits, MemoryStoreError


def memory_backend(store: Any = None, name: str | None = None) -> MemoryBackend:
    """The configured backend (`store` or `letta`). `store` needs a LangGraph BaseStore."""
    name = name or graph_settings().memory_backend
    if name == "letta":
        from loom.adapters.letta.memory import LettaMemoryBackend  # lazy: only this backend needs letta-client

        return LettaMemoryBackend(MemoryLimits.from_settings())
    if name != "store":
        raise MemoryStoreError(f"LOOM_MEMORY_BACKEND must be 'store' or 'letta', got {name!r}")
    if store is None:
        raise MemoryBackendUnavailable("the memory graph needs a store (run it through loom or langgraph dev)")
    from loom.graphs.memory_store_backend import StoreMemoryBackend

    return StoreMemoryBackend(store, MemoryLimits.from_settings())
