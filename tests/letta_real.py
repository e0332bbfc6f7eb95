"""Fixtures for the tests against the real Letta server (tests/letta_rig.py), behind the scripted LLM server.

`real_letta` is one rig per test session. Where the rig cannot be built (no redis-server, no PyPI to install
letta from, ...) the tests that use it skip with the reason, unless LOOM_TEST_REQUIRE_LETTA=1 makes that a
failure (CI, where the rig must run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from letta_client import Letta

from tests.conftest import LoomServer
from tests.letta_rig import LettaRig, missing_system_parts
from tests.llm_process import LLMServer

KEY = "letta-real-key"
MODEL = "openai-proxy/mock-model"  # Letta's handle for a model of an OpenAI-compatible server at a custom URL
EMBEDDING = "openai/text-embedding-3-small"  # served by the scripted LLM server (`/v1/embeddings`)
REQUIRE = os.environ.get("LOOM_TEST_REQUIRE_LETTA") == "1"
DEAD_LLM = "http://127.0.0.1:9/v1"  # the letta graph never calls loom's own LLM


@dataclass
class RealLetta:
    rig: LettaRig
    llm: LLMServer

    @property
    def url(self) -> str:
        return self.rig.url

    def client(self, key: str = KEY) -> Letta:
        return Letta(base_url=self.rig.url, api_key=key)

    def new_agent(self, name: str, approval_tools: tuple[str, ...] = ()) -> str:
        client = self.client()
        agent = client.agents.create(name=name, model=MODEL, embedding=EMBEDDING)
        for tool in approval_tools:
            client.agents.tools.update_approval(tool, agent_id=agent.id, body_requires_approval=True)
        return agent.id

    def user_texts(self, conversation_id: str) -> list[str]:
        """The user messages the server holds for a conversation, oldest first."""
        items = self.client().conversations.messages.list(conversation_id, order="asc", limit=100).items
        return [m.content for m in items if m.message_type == "user_message"]


def loom_for(tmp, letta_url: str, agent_id: str) -> LoomServer:
    """loom serving the `letta` graph against the Letta server (or a proxy in front of it) at `letta_url`."""
    return LoomServer(tmp, LOOM_LLM_BASE_URL=DEAD_LLM, LOOM_LETTA_BASE_URL=letta_url, LOOM_LETTA_API_KEY=KEY,
                      LOOM_LETTA_AGENT_ID=agent_id, LOOM_LETTA_MAX_RETRIES="1", LOOM_LETTA_TIMEOUT="30").start()


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason}, and LOOM_TEST_REQUIRE_LETTA=1 says the tests need the real Letta server",
                    pytrace=False)
    pytest.skip(f"{reason}: the real-Letta tests need it (LOOM_TEST_REQUIRE_LETTA=1 makes this a failure)")


@pytest.fixture(scope="session")
def real_letta(llm, tmp_path_factory):
    if reason := missing_system_parts():
        _unavailable(reason)
    rig = LettaRig(tmp_path_factory.mktemp("letta-rig"), KEY)
    try:
        rig.start(llm.url)
    except Exception as exc:  # noqa: BLE001 — an install or start-up failure is this machine's, with its reason
        _unavailable(f"the real Letta server could not be set up ({str(exc)[:2000]})")
    steps = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in rig.timings.items())
    print(f"\nthe Letta rig is up ({steps})")
    yield RealLetta(rig, llm)
    rig.stop()
