"""The corpus (tests/corpus/langgraph.json) under `langgraph dev`: the graphs loom serves from that file are the
graphs LangGraph's own server serves from it, and they run there too."""

from __future__ import annotations

import shutil

import pytest
from langgraph_sdk import get_sync_client

from tests.test_corpus import CORPUS, CORPUS_GRAPHS
from tests.test_studio import PERSISTENCE_DIR, Studio


@pytest.fixture(scope="module")
def corpus_studio(llm, tmp_path_factory):
    persistence_existed = PERSISTENCE_DIR.exists()
    server = Studio(tmp_path_factory.mktemp("corpus-studio") / "langgraph-dev.log", llm.url, config=CORPUS)
    server.env["OPENAI_BASE_URL"] = llm.url  # the corpus's ChatOpenAI models; langgraph.json `env` has the key
    yield server.start()
    server.stop()
    if not persistence_existed:
        shutil.rmtree(PERSISTENCE_DIR, ignore_errors=True)


def test_langgraph_dev_serves_the_same_graphs_and_runs_them(corpus_studio, llm):
    client = get_sync_client(url=corpus_studio.url, api_key=None, timeout=30)
    with corpus_studio.log_on_failure():
        assert {a["graph_id"] for a in client.assistants.search(limit=100)} == CORPUS_GRAPHS
        llm.script({"text": "Ahoy from Studio."})
        thread = client.threads.create()
        state = client.runs.wait(thread["thread_id"], "plain", input={"messages": [{"role": "user",
                                                                                   "content": "hi"}]},
                                 config={"configurable": {"style": "pirate"}})
        assert state["messages"][-1]["content"] == "Ahoy from Studio."
        assert llm.requests()[-1]["body"]["messages"][0]["content"] == "Answer in a pirate style."
