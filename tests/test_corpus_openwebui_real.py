"""Users' own graphs in a real OpenWebUI: loom serves the corpus's langgraph.json (tests/corpus/), its generated
pipe is installed in OpenWebUI 0.12 (tests/openwebui_rig.py), and chats go through OpenWebUI's own API."""

from __future__ import annotations

import pytest

from tests.conftest import LoomServer
from tests.openwebui_rig import OpenWebUI, install_loom_pipe
from tests.test_agui_clients import tool_call
from tests.test_corpus import CORPUS

PROXY_KEY = "corpus-e2e-key"
pytestmark = pytest.mark.timeout(1200)  # the first test may pay for OpenWebUI's venv (once per machine)


@pytest.fixture(scope="module")
def openwebui(llm, tmp_path_factory):
    loom = LoomServer(tmp_path_factory.mktemp("corpus-e2e"), LOOM_LLM_BASE_URL=llm.url, LOOM_GRAPHS=str(CORPUS),
                      OPENAI_BASE_URL=llm.url, LOOM_API_KEYS=f"{PROXY_KEY}=proxy",
                      LOOM_BUILTIN_GRAPHS="false").start()
    server = OpenWebUI(tmp_path_factory.mktemp("openwebui-corpus"))
    try:
        server.start()
        install_loom_pipe(server, loom.url, PROXY_KEY)
        yield server
    finally:
        server.stop()
        loom.stop()


def test_the_users_graphs_are_the_models(openwebui):
    models = set(openwebui.model_ids())
    assert {"loom.react", "loom.supervisor", "loom.swarm", "loom.deep"} <= models
    assert "loom.agent" not in models  # LOOM_BUILTIN_GRAPHS=false: exactly the user's langgraph.json


def test_a_prebuilt_react_agent_calls_its_tool_and_keeps_the_thread(openwebui, llm):
    llm.script({"tool_calls": [tool_call("get_weather", {"city": "Porto"})]}, {"text": "Sunny in Porto."},
               {"text": "You asked about Porto."})
    text, _ = openwebui.chat("loom.react", [{"role": "user", "content": "Weather in Porto?"}])
    assert '<details type="tool_calls"' in text and 'name="get_weather"' in text
    assert text.endswith("Sunny in Porto.")
    history = [{"role": "user", "content": "Weather in Porto?"}, {"role": "assistant", "content": text},
               {"role": "user", "content": "What did I ask?"}]
    again, _ = openwebui.chat("loom.react", history)
    assert again == "You asked about Porto."
    sent = [m for m in llm.requests()[-1]["body"]["messages"] if m["role"] != "system"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]  # no duplicates


def test_a_supervisor_team_answers_through_its_expert(openwebui, llm):
    llm.script({"tool_calls": [tool_call("transfer_to_research_expert", {})]},
               {"tool_calls": [tool_call("get_weather", {"city": "Porto"})]},
               {"text": "Porto is sunny, says the weather."},
               {"text": "The research expert found that Porto is sunny."})
    text, _ = openwebui.chat("loom.supervisor", [{"role": "user", "content": "Weather in Porto?"}])
    assert 'name="transfer_to_research_expert"' in text and 'name="get_weather"' in text
    assert "Porto is sunny, says the weather." in text  # the expert's answer, streamed under its name
    assert text.endswith("The research expert found that Porto is sunny.")
