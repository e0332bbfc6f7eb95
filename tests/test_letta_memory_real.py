"""The letta memory backend (LOOM_MEMORY_BACKEND=letta) against the real Letta server (tests/letta_rig.py), whose
archival memory embeds passages through the scripted LLM server's `/v1/embeddings`: every operation, ids that
survive updates, per-user agents, search that leaves out unrelated passages, and the memory REST API on it."""

from __future__ import annotations

import uuid

import httpx
import pytest

from loom.adapters.letta.config import letta_settings
from loom.adapters.letta.memory import LettaMemoryBackend
from loom.graphs.memory_store import MemoryBackendUnavailable, MemoryLimitExceeded, MemoryLimits, MemoryNotFound
from tests.conftest import LoomServer
from tests.letta_real import EMBEDDING, KEY, MODEL

LIMITS = MemoryLimits(max_per_user=4, max_length=80, max_tags=3)
SETTINGS = {"LOOM_LETTA_MEMORY_MODEL": MODEL, "LOOM_LETTA_MEMORY_EMBEDDING": EMBEDDING}


@pytest.fixture(scope="module", autouse=True)
def _memory_agent_models():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SETTINGS.items():
            patch.setenv(name, value)
        letta_settings.cache_clear()
        yield
    letta_settings.cache_clear()


@pytest.fixture
def backend(real_letta) -> LettaMemoryBackend:
    return LettaMemoryBackend(LIMITS, base_url=real_letta.url, api_key=KEY)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def agent_of(real_letta, user: str) -> str:
    [agent] = real_letta.client().agents.list(tags=["loom-memory", f"loom-user:{user}"], match_all_tags=True)
    return agent.id


def passages_of(real_letta, user: str) -> list:
    return list(real_letta.client().agents.passages.list(agent_of(real_letta, user)))


async def test_add_get_update_search_delete(backend, real_letta):
    user = new_user()
    added = await backend.add(user, "  I grow tomatoes on my balcony.  ", ["garden"])
    assert (added.content, added.tags) == ("I grow tomatoes on my balcony.", ["garden"])
    assert await backend.get(user, added.id) == added
    changed = await backend.update(user, added.id, content="I grow tomatoes and mint.")
    assert (changed.id, changed.tags, changed.created_at) == (added.id, ["garden"], added.created_at)
    assert changed.updated_at > added.updated_at and await backend.get(user, added.id) == changed
    [passage] = passages_of(real_letta, user)  # the update replaced the passage, the loom id stayed
    assert f"loom:id:{added.id}" in passage.tags and passage.text == "I grow tomatoes and mint."
    other = await backend.add(user, "My cat is called Miso.")
    found = await backend.search(user, "mint tomatoes")
    assert [m.id for m in found] == [added.id] and found[0].score == 1.0 and found[0].tags == ["garden"]
    assert found[0].created_at == added.created_at
    await backend.delete(user, added.id)
    with pytest.raises(MemoryNotFound):
        await backend.get(user, added.id)
    page = await backend.list(user)
    assert [m.id for m in page.items] == [other.id] and page.total == 1


async def test_search_leaves_out_what_letta_finds_but_is_unrelated(backend, real_letta):
    """Letta's archival search returns the nearest passages up to top_k however unrelated: loom scores them."""
    user = new_user()
    await backend.add(user, "I grow tomatoes on my balcony.")
    await backend.add(user, "My cat is called Miso.")
    raw = real_letta.client().agents.passages.search(agent_of(real_letta, user), query="quantum chromodynamics",
                                                     top_k=5)
    assert raw.count == 2  # Letta: both, with no score
    assert await backend.search(user, "quantum chromodynamics") == []
    found = await backend.search(user, "Miso the cat")
    assert [m.content for m in found] == ["My cat is called Miso."] and 0 < found[0].score <= 1


async def test_limits_pages_and_isolation(backend, real_letta):
    alice, bob = new_user(), new_user()
    ids = [(await backend.add(alice, f"fact {i}")).id for i in range(LIMITS.max_per_user)]
    with pytest.raises(MemoryLimitExceeded, match="LOOM_MEMORY_MAX_PER_USER"):
        await backend.add(alice, "one too many")
    page = await backend.list(alice, limit=2, offset=1)
    assert [m.id for m in page.items] == [ids[2], ids[1]] and page.total == 4
    await backend.add(bob, "Bob likes chess.")
    for call in (backend.get(bob, ids[0]), backend.update(bob, ids[0], content="mine now"),
                 backend.delete(bob, ids[0])):
        with pytest.raises(MemoryNotFound):
            await call
    assert await backend.search(bob, "fact") == []
    assert (await backend.list(new_user())).total == 0  # no agent yet: empty, nothing created
    assert agent_of(real_letta, alice) != agent_of(real_letta, bob)


async def test_memories_the_agent_wrote_itself_are_listed(backend, real_letta):
    user = new_user()
    await backend.add(user, "Saved through loom.")
    own = real_letta.client().agents.passages.create(agent_of(real_letta, user), text="Saved by the agent.")
    listed = {m.content: m for m in (await backend.list(user)).items}
    assert listed["Saved by the agent."].id == own[0].id and listed["Saved by the agent."].tags == []
    await backend.delete(user, own[0].id)
    assert [m.content for m in (await backend.list(user)).items] == ["Saved through loom."]


async def test_bad_key_is_backend_unavailable(real_letta):
    with pytest.raises(MemoryBackendUnavailable, match="LOOM_LETTA_API_KEY"):
        await LettaMemoryBackend(LIMITS, base_url=real_letta.url, api_key="wrong").add(new_user(), "hi")


def test_memory_rest_api_on_the_letta_backend(real_letta, tmp_path):
    alice, bob = new_user(), new_user()
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL="http://127.0.0.1:9/v1", LOOM_MEMORY_BACKEND="letta",
                        LOOM_LETTA_BASE_URL=real_letta.url, LOOM_LETTA_API_KEY=KEY, **SETTINGS,
                        LOOM_API_KEYS=f"ka=user:{alice} kb=user:{bob}").start()

    def call(method: str, path: str, key: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{server.url}{path}", headers={"authorization": f"Bearer {key}"}, timeout=30,
                             **kwargs)

    try:
        created = call("POST", "/memories", "ka", json={"content": "I take the 7:40 train.", "tags": ["commute"]})
        assert created.status_code == 201, created.text
        memory = created.json()
        assert call("GET", f"/memories/{memory['id']}", "ka").json() == memory
        assert [m["id"] for m in call("GET", "/memories/search", "ka", params={"q": "train"}).json()["items"]] == [
            memory["id"]]
        assert call("GET", "/memories/search", "ka", params={"q": "violin lessons"}).json()["items"] == []
        assert call("GET", f"/memories/{memory['id']}", "kb").status_code == 404
        assert call("DELETE", f"/memories/{memory['id']}", "ka").status_code == 204
        assert passages_of(real_letta, alice) == []  # it lived in alice's own Letta agent
    finally:
        server.stop()
