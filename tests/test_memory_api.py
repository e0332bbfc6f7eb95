"""The memory REST API over real HTTP (loom under uvicorn, SQLite and PostgreSQL): every operation and limit,
pagination edges, isolation between users (user-bound keys and a trusted proxy naming users), persistence across
a server restart, and search switched off."""

from __future__ import annotations

import pytest

from tests.conftest import LoomServer, user
from tests.memory_fixtures import (
    ALICE_KEY,
    BOB_KEY,
    MAX_LENGTH,
    MAX_PER_USER,
    PROXY_KEY,
    add,
    api,
    fresh_user,
    memory_env,
)
from tests.memory_fixtures import memory_loom as memory_loom_fixture

memory_loom = memory_loom_fixture  # the module's server (a fixture shared with test_memory_graph.py)


def error_of(response) -> dict:
    return response.json()["error"]


# ----------------------------------------------------------------------------------------------- operations


def test_add_get_update_search_delete(memory_loom):
    user = fresh_user()
    created = add(memory_loom, "I grow tomatoes and basil on my balcony.", user=user, tags=["garden"])
    assert set(created) == {"id", "content", "tags", "created_at", "updated_at"} and created["tags"] == ["garden"]
    assert api(memory_loom, "GET", f"/memories/{created['id']}", PROXY_KEY, user).json() == created

    patched = api(memory_loom, "PATCH", f"/memories/{created['id']}", PROXY_KEY, user,
                  json={"content": "I grow tomatoes, basil and mint."})
    assert patched.status_code == 200
    assert patched.json()["content"] == "I grow tomatoes, basil and mint." and patched.json()["tags"] == ["garden"]
    assert patched.json()["updated_at"] > created["updated_at"]

    found = api(memory_loom, "GET", "/memories/search", PROXY_KEY, user, params={"q": "mint"}).json()["items"]
    assert [m["id"] for m in found] == [created["id"]] and 0 < found[0]["score"] <= 1

    assert api(memory_loom, "DELETE", f"/memories/{created['id']}", PROXY_KEY, user).status_code == 204
    missing = api(memory_loom, "GET", f"/memories/{created['id']}", PROXY_KEY, user)
    assert missing.status_code == 404 and error_of(missing)["code"] == "memory_not_found"
    assert api(memory_loom, "DELETE", f"/memories/{created['id']}", PROXY_KEY, user).status_code == 404
    assert api(memory_loom, "GET", "/memories", PROXY_KEY, user).json()["total"] == 0


def test_pagination_edges(memory_loom):
    user = fresh_user()
    ids = [add(memory_loom, f"fact number {i}", user=user)["id"] for i in range(MAX_PER_USER)]

    def page(**params):
        response = api(memory_loom, "GET", "/memories", PROXY_KEY, user, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    first, second, third = page(limit=2), page(limit=2, offset=2), page(limit=2, offset=4)
    assert [m["id"] for p in (first, second, third) for m in p["items"]] == ids[::-1]
    assert (first["total"], first["limit"], first["offset"]) == (MAX_PER_USER, 2, 0)
    assert page(offset=MAX_PER_USER)["items"] == [] and page(offset=1000)["total"] == MAX_PER_USER
    assert len(page(limit=100)["items"]) == MAX_PER_USER
    for params, words in (({"limit": 101}, "between 1 and 100"), ({"limit": 0}, "between 1 and 100"),
                          ({"offset": -1}, "0 or more")):
        response = api(memory_loom, "GET", "/memories", PROXY_KEY, user, params=params)
        assert response.status_code == 422 and error_of(response)["code"] == "memory_limit"
        assert words in error_of(response)["message"]


def test_limits_name_the_setting(memory_loom):
    user = fresh_user()
    too_long = api(memory_loom, "POST", "/memories", PROXY_KEY, user, json={"content": "x" * (MAX_LENGTH + 1)})
    assert too_long.status_code == 422 and "LOOM_MEMORY_MAX_LENGTH" in error_of(too_long)["message"]
    empty = api(memory_loom, "POST", "/memories", PROXY_KEY, user, json={"content": "  "})
    assert empty.status_code == 422 and "empty" in error_of(empty)["message"]
    ids = [add(memory_loom, f"fact {i}", user=user)["id"] for i in range(MAX_PER_USER)]
    full = api(memory_loom, "POST", "/memories", PROXY_KEY, user, json={"content": "one more"})
    assert full.status_code == 422 and error_of(full)["code"] == "memory_limit"
    assert "LOOM_MEMORY_MAX_PER_USER" in error_of(full)["message"]
    patched = api(memory_loom, "PATCH", f"/memories/{ids[0]}", PROXY_KEY, user, json={"content": "y" * 999})
    assert patched.status_code == 422 and "LOOM_MEMORY_MAX_LENGTH" in error_of(patched)["message"]
    no_query = api(memory_loom, "GET", "/memories/search", PROXY_KEY, user)
    assert no_query.status_code == 422 and "query is empty" in error_of(no_query)["message"]
    assert api(memory_loom, "POST", "/memories", PROXY_KEY, user, json={"tags": []}).status_code == 422


# ------------------------------------------------------------------------------------------------ isolation


def test_user_keys_reach_only_their_own_memories(memory_loom):
    alice, bob = memory_loom.alice, memory_loom.bob
    secret = add(memory_loom, "Alice's bank PIN hint: her first cat.", key=ALICE_KEY)
    add(memory_loom, "Bob's bank is ING.", key=BOB_KEY)

    def listed(key):
        return [m["content"] for m in api(memory_loom, "GET", "/memories", key).json()["items"]]

    assert "Alice's bank PIN hint: her first cat." in listed(ALICE_KEY)
    assert all("Alice" not in m for m in listed(BOB_KEY))
    assert all("Alice" not in m["content"] for m in
               api(memory_loom, "GET", "/memories/search", BOB_KEY, params={"q": "bank PIN cat"}).json()["items"])
    for method, body in (("GET", None), ("PATCH", {"content": "hacked"}), ("DELETE", None)):
        response = api(memory_loom, method, f"/memories/{secret['id']}", BOB_KEY, json=body)
        assert response.status_code == 404, (method, response.text)  # not 403: existence is not revealed
    assert api(memory_loom, "GET", f"/memories/{secret['id']}", ALICE_KEY).json()["content"] == secret["content"]

    # A user-bound key cannot name another user, by header or query.
    for kwargs in ({"user": alice}, {"params": {"user": alice}}):
        response = api(memory_loom, "GET", "/memories", BOB_KEY, **kwargs)
        assert response.status_code == 403 and error_of(response)["code"] == "user_mismatch"
    assert api(memory_loom, "GET", "/memories", ALICE_KEY, alice).status_code == 200  # naming itself is fine
    assert api(memory_loom, "GET", "/memories").status_code == 401
    assert api(memory_loom, "GET", "/memories", "wrong-key").status_code == 401
    assert bob != alice


def test_proxy_key_acts_for_the_user_it_names(memory_loom):
    carol, dave = fresh_user("carol"), fresh_user("dave")
    note = add(memory_loom, "Carol is allergic to peanuts.", user=carol)
    dave_sees = api(memory_loom, "GET", "/memories", PROXY_KEY, params={"user": dave}).json()
    assert dave_sees["total"] == 0
    assert api(memory_loom, "GET", "/memories/search", PROXY_KEY, dave, params={"q": "peanuts"}).json() == {
        "items": []}
    for method in ("GET", "DELETE"):
        assert api(memory_loom, method, f"/memories/{note['id']}", PROXY_KEY, dave).status_code == 404
    assert api(memory_loom, "GET", f"/memories/{note['id']}", PROXY_KEY, carol).status_code == 200
    unnamed = api(memory_loom, "GET", "/memories", PROXY_KEY)
    assert unnamed.status_code == 422 and "X-Loom-User" in error_of(unnamed)["message"]
    # The pipe acts for whoever it names, including users who also have keys of their own.
    mine = add(memory_loom, "Alice likes green tea.", key=ALICE_KEY)
    assert api(memory_loom, "GET", f"/memories/{mine['id']}", PROXY_KEY, memory_loom.alice).status_code == 200


# ------------------------------------------------------------------------------------------ durability, switch


def test_memories_survive_a_restart(memory_loom):
    user = fresh_user()
    kept = add(memory_loom, "I support Olympique Lyonnais.", user=user)
    memory_loom.restart()
    assert api(memory_loom, "GET", f"/memories/{kept['id']}", PROXY_KEY, user).json() == kept
    found = api(memory_loom, "GET", "/memories/search", PROXY_KEY, user, params={"q": "Lyonnais"}).json()
    assert [m["id"] for m in found["items"]] == [kept["id"]]


@pytest.fixture(scope="module")
def search_off(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("search-off"), **memory_env(llm, LOOM_MEMORY_SEARCH="false")).start()
    yield server
    server.stop()


def test_search_switched_off(search_off):
    # No API keys: loopback only, the user named by X-Loom-User (or "local").
    kept = add(search_off, "I drive a Toyota.", key=None, user="erin")
    response = api(search_off, "GET", "/memories/search", None, "erin", params={"q": "toyota"})
    assert response.status_code == 403 and error_of(response)["code"] == "memory_search_disabled"
    assert "LOOM_MEMORY_SEARCH" in error_of(response)["message"]
    assert api(search_off, "GET", "/memories", None, "erin").json()["items"] == [kept]
    assert api(search_off, "GET", "/memories").json()["total"] == 0  # user "local"


def test_recall_without_search_uses_the_newest_memories(search_off, llm):
    older = add(search_off, "I was born in Oslo.", key=None, user="frank")
    newer = add(search_off, "I moved to Bergen.", key=None, user="frank")
    llm.script({"text": "Hi Frank."}, {"text": '{"memories": []}'})
    events = search_off.run("memory", [user("hello")], forwardedProps={"user": {"id": "frank"},
                                                                       "context": {"recall": 5}})
    (recalled,) = [e["value"] for e in events if e["type"] == "CUSTOM"]
    assert [m["id"] for m in recalled["memories"]] == [newer["id"], older["id"]]



def test_malformed_requests_get_loom_error_shape(memory_loom):
    user = fresh_user()
    response = api(memory_loom, "GET", "/memories", PROXY_KEY, user, params={"limit": "many"})
    assert response.status_code == 422 and error_of(response)["field"] == "limit"
    response = api(memory_loom, "POST", "/memories", PROXY_KEY, user, json={"tags": ["no content"]})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_input"
