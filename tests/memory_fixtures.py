"""A loom server for the memory tests: two user-bound keys, a trusted-proxy key, small limits, embeddings from
the scripted LLM server (hashed bag of words), on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import POSTGRES_URL, LoomServer

ALICE_KEY, BOB_KEY, PROXY_KEY = "key-alice", "key-bob", "key-proxy"
MAX_PER_USER, MAX_LENGTH = 5, 200


def fresh_user(name: str = "user") -> str:
    # PostgreSQL outlives a test run: every run uses users of its own.
    return f"{name}-{uuid.uuid4().hex[:10]}"


def memory_env(llm, **extra: str) -> dict[str, str]:
    return {"LOOM_LLM_BASE_URL": llm.url, "LOOM_MEMORY_EMBEDDINGS_URL": llm.url,
            "LOOM_MEMORY_EMBEDDINGS_MODEL": "hashed-bow", "LOOM_MEMORY_MAX_PER_USER": str(MAX_PER_USER),
            "LOOM_MEMORY_MAX_LENGTH": str(MAX_LENGTH), **extra}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def memory_loom(request, llm, tmp_path_factory):
    alice, bob = fresh_user("alice"), fresh_user("bob")
    env = memory_env(llm, LOOM_API_KEYS=f"{ALICE_KEY}=user:{alice} {BOB_KEY}=user:{bob} {PROXY_KEY}=proxy")
    if request.param == "postgres":
        env["LOOM_DATABASE_URL"] = POSTGRES_URL
    server = LoomServer(tmp_path_factory.mktemp(f"memory-{request.param}"), **env).start()
    server.alice, server.bob = alice, bob
    yield server
    server.stop()


def api(server: LoomServer, method: str, path: str, key: str | None = None, user: str | None = None,
        **kwargs) -> httpx.Response:
    """One request to the memory REST API, as `key` (and, for the proxy key, on behalf of `user`)."""
    headers = kwargs.pop("headers", {})
    if key:
        headers["authorization"] = f"Bearer {key}"
    if user:
        headers["x-loom-user"] = user
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kwargs)


def add(server: LoomServer, content: str, key: str = PROXY_KEY, user: str | None = None, **fields) -> dict:
    response = api(server, "POST", "/memories", key, user, json={"content": content, **fields})
    assert response.status_code == 201, response.text
    return response.json()
