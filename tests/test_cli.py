"""`loom chat` streams a run to the terminal: through a running server (the default) or in-process (--local)."""

import os
import subprocess

import httpx

from tests.conftest import BIN, REPO


def _chat(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "loom"), "chat", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def test_loom_chat_local_streams_a_tool_run(llm, tmp_path):
    llm.script({"tool_calls": [{"id": "call_1", "name": "calculator", "arguments": {"expression": "2137*19"}}]},
               {"text": "2137*19 = 40603."})
    env = {**os.environ, "LOOM_LLM_BASE_URL": llm.url, "LOOM_LLM_MODEL": "scripted",
           "LOOM_DATABASE_URL": f"sqlite:///{tmp_path / 'chat.db'}", "COLUMNS": "200"}
    done = _chat(["--local", "agent", "What is 2137*19?"], env)
    assert done.returncode == 0, done.stderr
    assert "calculator" in done.stdout and "→ 40603" in done.stdout and "2137*19 = 40603." in done.stdout
    thread = done.stdout.strip().splitlines()[-1].removeprefix("thread ")
    llm.script({"text": "You asked about 2137*19."})
    again = _chat(["--local", "agent", "What did I ask?", "--thread", thread], env)
    assert again.returncode == 0, again.stderr
    roles = [m["role"] for m in llm.requests()[-1]["body"]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]


def test_loom_chat_names_an_unknown_graph(llm, tmp_path):
    env = {**os.environ, "LOOM_LLM_BASE_URL": llm.url, "LOOM_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    done = _chat(["--local", "nope", "hi"], env)
    assert done.returncode == 2 and "available: agent" in done.stdout


def test_loom_chat_talks_to_the_running_server_by_default(llm, loom_sqlite, tmp_path):
    """The README's "Try it" runs against the server `loom serve` started: found at LOOM_HOST:LOOM_PORT."""
    llm.script({"tool_calls": [{"id": "call_1", "name": "calculator", "arguments": {"expression": "2137*19"}}]},
               {"text": "2137*19 = 40603."})
    # No LLM configured for the client process: a run in-process would start the demo model instead.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env |= {"LOOM_PORT": str(loom_sqlite.port), "COLUMNS": "200",
            "LOOM_DATABASE_URL": f"sqlite:///{tmp_path / 'never-used.db'}"}
    first = _chat(["agent", "What is 2137*19?"], env)
    assert first.returncode == 0, first.stderr
    assert "→ 40603" in first.stdout and "2137*19 = 40603." in first.stdout
    assert not (tmp_path / "never-used.db").exists()  # nothing ran in-process
    thread = first.stdout.strip().splitlines()[-1].removeprefix("thread ")
    llm.script({"text": "You asked about 2137*19."})
    again = _chat(["agent", "What did I ask?", "--thread", thread, "--url", loom_sqlite.url], env)
    assert again.returncode == 0, again.stderr
    assert "You asked about 2137*19." in again.stdout
    roles = [m["role"] for m in llm.requests()[-1]["body"]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]  # the stored turn, not a fork


def test_loom_chat_names_an_unreachable_server_and_a_refused_run(loom_sqlite):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    down = _chat(["agent", "hi", "--url", "http://127.0.0.1:9"], env)
    assert down.returncode == 2 and "cannot reach loom at http://127.0.0.1:9" in down.stdout
    unknown = _chat(["nope", "hi", "--url", loom_sqlite.url], env)
    assert unknown.returncode == 2 and "refused the run" in unknown.stdout and "agent" in unknown.stdout


def test_loom_chat_shows_recalled_memories(llm, loom_sqlite):
    """What the memory graph recalled is shown above the answer, as the OpenWebUI pipe shows it as sources."""
    saved = httpx.post(f"{loom_sqlite.url}/memories", json={"content": "Ada [admin] lives in Lisbon."}, timeout=10)
    assert saved.status_code == 201, saved.text
    llm.script({"text": "In Lisbon."})
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")} | {"COLUMNS": "200"}
    done = _chat(["memory", "Where does Ada live? Lisbon?", "--url", loom_sqlite.url], env)
    assert done.returncode == 0, done.stderr
    assert "recalled: Ada [admin] lives in Lisbon." in done.stdout and "In Lisbon." in done.stdout
