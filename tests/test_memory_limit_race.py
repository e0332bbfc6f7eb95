"""The per-user memory limit holds under concurrent adds: within one server (SQLite, PostgreSQL) and across two
replicas on one PostgreSQL database."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import POSTGRES_URL, LoomServer
from tests.memory_fixtures import MAX_PER_USER, PROXY_KEY, api, fresh_user, memory_env
from tests.memory_fixtures import memory_loom as memory_loom_fixture

memory_loom = memory_loom_fixture

ADDS = 40


async def _add_concurrently(urls: list[str], user: str) -> list[int]:
    headers = {"authorization": f"Bearer {PROXY_KEY}", "x-loom-user": user}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=ADDS)) as client:
        responses = await asyncio.gather(*(
            client.post(f"{urls[i % len(urls)]}/memories", json={"content": f"fact {i}"}, headers=headers)
            for i in range(ADDS)))
    for response in responses:
        assert response.status_code == 201 or response.json()["error"]["code"] == "memory_limit", response.text
    return [r.status_code for r in responses]


def _stored(server: LoomServer, user: str) -> int:
    return api(server, "GET", "/memories", PROXY_KEY, user, params={"limit": 100}).json()["total"]


def test_concurrent_adds_at_the_limit_store_exactly_the_limit(memory_loom):
    user = fresh_user()
    statuses = asyncio.run(_add_concurrently([memory_loom.url], user))
    assert statuses.count(201) == MAX_PER_USER and _stored(memory_loom, user) == MAX_PER_USER


@pytest.mark.postgres
def test_concurrent_adds_across_two_replicas_never_pass_the_limit(llm, tmp_path):
    env = memory_env(llm, LOOM_API_KEYS=f"{PROXY_KEY}=proxy", LOOM_DATABASE_URL=POSTGRES_URL)
    first = LoomServer(tmp_path / "a", **env)
    second = LoomServer(tmp_path / "b", **env)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first.start()
    try:
        second.start()
        user = fresh_user()
        statuses = asyncio.run(_add_concurrently([first.url, second.url], user))
        stored = _stored(first, user)
        assert 1 <= stored <= MAX_PER_USER and statuses.count(201) == stored
        assert _stored(second, user) == stored
    finally:
        second.stop()
        first.stop()
