"""The letta memory backend (LOOM_MEMORY_BACKEND=letta) against the stand-in Letta server, through the real
letta-client: every operation and limit, pagination edges, ids that survive updates, per-user isolation (one
Letta agent per user), Letta failures, and the memory REST API running on it."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest
from letta_client import Letta

from loom.adapters.letta.memory import LettaMemoryBackend
from loom.graphs.memory_store import (
    MemoryBackendUnavailable,
    MemoryLimitExceeded,
    MemoryLimits,
    MemoryNotFound,
    MemorySearchDisabled,
    MemoryStoreError,
)
from tests.conftest import LoomServer
from tests.letta_process import LettaServer

KEY = "letta-memory-key"
LIMITS = MemoryLimits(max_per_user=4, max_length=80, max_tags=3)


@pytest.fixture(scope="module")
def letta_srv():
    server = LettaServer(api_key=KEY).start()
    yield server
    server.stop()


@pytest.fixture
def backend(letta_srv) -> LettaMemoryBackend:
    return LettaMemoryBackend(LIMITS, base_url=letta_srv.url, api_key=KEY)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def passages_of(letta_srv, user: str) -> list[dict]:
    state = letta_srv.state()
    [agent] = [a for a in state["agents"].values() if f"loom-user:{user}" in a["tags"]]
    return state["passages"].get(agent["id"], [])


async def test_add_get_update_search_delete(backend, letta_srv):
    user = new_user()
    added = await backend.add(user, "  I grow tomatoes on my balcony.  ", ["garden"])
    assert (added.content, added.tags) == ("I grow tomatoes on my balcony.", ["garden"])
    assert added.created_at == added.updated_at and await backend.get(user, added.id) == added

    changed = await backend.update(user, added.id, content="I grow tomatoes and mint.")
    assert (changed.id, changed.tags, changed.created_at) == (added.id, ["garden"], added.created_at)
    assert changed.updated_at > added.updated_at and await backend.get(user, added.id) == changed
    retagged = await backend.update(user, added.id, tags=["garden", "herbs"])
    assert (retagged.content, retagged.tags) == ("I grow tomatoes and mint.", ["garden", "herbs"])
    [passage] = passages_of(letta_srv, user)  # the update replaced the passage, the loom id stayed
    assert f"loom:id:{added.id}" in passage["tags"] and passage["text"] == "I grow tomatoes and mint."

    other = await backend.add(user, "My cat is called Miso.")
    found = await backend.search(user, "mint tomatoes")
    assert [m.id for m in found] == [added.id] and found[0].score == 1.0 and found[0].tags == ["garden", "herbs"]
    assert found[0].created_at == added.created_at

    await backend.delete(user, added.id)
    with pytest.raises(MemoryNotFound):
        await backend.get(user, added.id)
    with pytest.raises(MemoryNotFound):
        await backend.delete(user, added.id)
    page = await backend.list(user)
    assert [m.id for m in page.items] == [other.id] and page.total == 1


async def test_limits(backend):
    user = new_user()
    with pytest.raises(MemoryLimitExceeded, match="80"):
        await backend.add(user, "x" * 81)
    with pytest.raises(MemoryLimitExceeded, match="empty"):
        await backend.add(user, "   ")
    with pytest.raises(MemoryLimitExceeded, match="tags"):
        await backend.add(user, "ok", ["a", "b", "c", "d"])
    with pytest.raises(MemoryStoreError, match="reserved"):
        await backend.add(user, "ok", ["loom:id:someone-elses"])
    for i in range(LIMITS.max_per_user):
        await backend.add(user, f"fact {i}")
    with pytest.raises(MemoryLimitExceeded, match="LOOM_MEMORY_MAX_PER_USER"):
        await backend.add(user, "one too many")
    memory = (await backend.list(user, limit=1)).items[0]
    with pytest.raises(MemoryLimitExceeded):
        await backend.update(user, memory.id, content="y" * 81)
    for limit, offset in ((0, 0), (101, 0), (5, -1)):
        with pytest.raises(MemoryLimitExceeded):
            await backend.list(user, limit=limit, offset=offset)
    no_search = LettaMemoryBackend(MemoryLimits(search_enabled=False), base_url=backend._base_url, api_key=KEY)
    with pytest.raises(MemorySearchDisabled):
        await no_search.search(user, "fact")


async def test_pagination_is_newest_first_with_the_total(letta_srv):
    backend = LettaMemoryBackend(MemoryLimits(max_per_user=10), base_url=letta_srv.url, api_key=KEY)
    user = new_user()
    ids = [(await backend.add(user, f"fact {i}")).id for i in range(5)]
    pages = {(limit, offset): await backend.list(user, limit=limit, offset=offset)
             for limit, offset in ((2, 0), (2, 2), (2, 4), (2, 5), (100, 0), (3, 10))}
    assert {k: [m.id for m in p.items] for k, p in pages.items()} == {
        (2, 0): [ids[4], ids[3]], (2, 2): [ids[2], ids[1]], (2, 4): [ids[0]],
        (2, 5): [], (100, 0): ids[::-1], (3, 10): []}
    assert {p.total for p in pages.values()} == {5}
    assert (await backend.list(new_user())).total == 0  # a user without an agent yet: empty, nothing created


async def test_users_are_isolated_in_their_own_agents(backend, letta_srv):
    alice, bob = new_user(), new_user()
    secret = await backend.add(alice, "Alice's locker code is 4711.")
    await backend.add(bob, "Bob likes chess.")
    for call in (backend.get(bob, secret.id), backend.update(bob, secret.id, content="mine now"),
                 backend.delete(bob, secret.id)):
        with pytest.raises(MemoryNotFound):
            await call
    assert await backend.search(bob, "locker code") == []
    assert [m.content for m in (await backend.list(bob)).items] == ["Bob likes chess."]
    assert await backend.get(alice, secret.id) == secret
    assert passages_of(letta_srv, alice)[0]["archive_id"] != passages_of(letta_srv, bob)[0]["archive_id"]


async def test_memories_the_agent_wrote_itself_are_listed(backend, letta_srv):
    user = new_user()
    await backend.add(user, "Saved through loom.")
    [agent] = [a for a in letta_srv.state()["agents"].values() if f"loom-user:{user}" in a["tags"]]
    own = Letta(base_url=letta_srv.url, api_key=KEY).agents.passages.create(agent["id"], text="Saved by the agent.")
    listed = {m.content: m for m in (await backend.list(user)).items}
    assert listed["Saved by the agent."].id == own[0].id and listed["Saved by the agent."].tags == []
    await backend.delete(user, own[0].id)
    assert [m.content for m in (await backend.list(user)).items] == ["Saved through loom."]


async def test_letta_failures_are_backend_unavailable(letta_srv):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(MemoryBackendUnavailable, match="LOOM_LETTA_BASE_URL"):
        await LettaMemoryBackend(LIMITS, base_url=dead, api_key=KEY).list(new_user())
    with pytest.raises(MemoryBackendUnavailable, match="LOOM_LETTA_API_KEY"):
        await LettaMemoryBackend(LIMITS, base_url=letta_srv.url, api_key="wrong").add(new_user(), "hi")


def test_memory_rest_api_on_the_letta_backend(letta_srv, tmp_path):
    alice, bob = new_user(), new_user()
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL="http://127.0.0.1:9/v1", LOOM_MEMORY_BACKEND="letta",
                        LOOM_LETTA_BASE_URL=letta_srv.url, LOOM_LETTA_API_KEY=KEY,
                        LOOM_API_KEYS=f"ka=user:{alice} kb=user:{bob}").start()

    def call(method: str, path: str, key: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{server.url}{path}", headers={"authorization": f"Bearer {key}"}, timeout=30,
                             **kwargs)

    try:
        created = call("POST", "/memories", "ka", json={"content": "I take the 7:40 train.", "tags": ["commute"]})
        assert created.status_code == 201, created.text
        memory = created.json()
        assert call("GET", f"/memories/{memory['id']}", "ka").json() == memory
        found = call("GET", "/memories/search", "ka", params={"q": "train"}).json()["items"]
        assert [m["id"] for m in found] == [memory["id"]]
        assert call("GET", f"/memories/{memory['id']}", "kb").status_code == 404
        assert call("GET", "/memories", "kb").json()["total"] == 0
        assert call("DELETE", f"/memories/{memory['id']}", "ka").status_code == 204
        assert passages_of(letta_srv, alice) == []  # it lived in alice's own Letta agent
    finally:
        server.stop()
