"""`langgraph dev` right after the README's first command: no LLM configured, so the graphs start the embedded
demo model themselves on their first model call (graphs/llm.py) and Studio runs work offline."""

from __future__ import annotations

import json
import shutil

import pytest
from langgraph_sdk import get_sync_client

from tests.test_studio import PERSISTENCE_DIR, Studio

pytest.importorskip("xllamacpp", reason="the demo model needs the `local` extra (pip install -e '.[local]')")


def test_studio_runs_the_agent_on_the_demo_model_with_nothing_configured(tmp_path):
    persistence_existed = PERSISTENCE_DIR.exists()
    studio = Studio(tmp_path / "langgraph-dev.log", llm_url=None).start()
    try:
        client = get_sync_client(url=studio.url, api_key=None, timeout=120)
        with studio.log_on_failure():
            assert {a["graph_id"] for a in client.assistants.search(limit=100)} >= {"agent", "moa", "memory", "letta"}
            result = client.runs.wait(client.threads.create()["thread_id"], "agent",
                                      input={"messages": [{"role": "user", "content": "What is 2137*19?"}]},
                                      raise_error=True)
            call = next(m for m in result["messages"] if m["type"] == "ai" and m.get("tool_calls"))["tool_calls"][0]
            assert call["name"] == "calculator"
            tool = next(m for m in result["messages"] if m["type"] == "tool")
            assert json.loads(tool["content"]) == 40603 or "40603" in tool["content"]
            assert result["messages"][-1]["type"] == "ai" and result["messages"][-1]["content"].strip()
            assert "tiny offline demo model" in studio.log()  # the log says what answers and how to change it
    finally:
        studio.stop()
        if not persistence_existed:
            shutil.rmtree(PERSISTENCE_DIR, ignore_errors=True)
