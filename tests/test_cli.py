"""`loom chat` streams a run to the terminal."""

import os
import subprocess

from tests.conftest import BIN, REPO


def test_loom_chat_streams_a_tool_run(llm, tmp_path):
    llm.script({"tool_calls": [{"id": "call_1", "name": "calculator", "arguments": {"expression": "2137*19"}}]},
               {"text": "2137*19 = 40603."})
    env = {**os.environ, "LOOM_LLM_BASE_URL": llm.url, "LOOM_LLM_MODEL": "scripted",
           "LOOM_DATABASE_URL": f"sqlite:///{tmp_path / 'chat.db'}", "COLUMNS": "200"}
    done = subprocess.run([str(BIN / "loom"), "chat", "agent", "What is 2137*19?"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "calculator" in done.stdout and "→ 40603" in done.stdout and "2137*19 = 40603." in done.stdout
    thread = done.stdout.strip().splitlines()[-1].removeprefix("thread ")
    llm.script({"text": "You asked about 2137*19."})
    again = subprocess.run([str(BIN / "loom"), "chat", "agent", "What did I ask?", "--thread", thread], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    roles = [m["role"] for m in llm.requests()[-1]["body"]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]


def test_loom_chat_names_an_unknown_graph(llm, tmp_path):
    env = {**os.environ, "LOOM_LLM_BASE_URL": llm.url, "LOOM_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    done = subprocess.run([str(BIN / "loom"), "chat", "nope", "hi"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "available: agent" in done.stdout
