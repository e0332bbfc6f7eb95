"""LangGraph Studio: the graphs in `langgraph.json` load and run under `langgraph dev` (in-memory runtime).

Real processes: the scripted LLM (conftest's `llm`) and `langgraph dev` on loopback, driven through
`langgraph_sdk` exactly as Studio drives it (assistants, schemas, threads, runs). Nothing phones home:
LangSmith tracing is off and its keys are stripped, CLI analytics and the PyPI version check are off,
no browser and no tunnel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_sync_client

from tests.llm_server import free_port

REPO = Path(__file__).resolve().parent.parent
LANGGRAPH = Path(sys.executable).parent / "langgraph"
GRAPHS = json.loads((REPO / "langgraph.json").read_text())["graphs"]
PERSISTENCE_DIR = REPO / ".langgraph_api"  # where the in-memory runtime pickles threads and store
START_TIMEOUT = 90
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Studio:
    """`langgraph dev` in its own process group, its output in a log file."""

    def __init__(self, log_path: Path, llm_url: str | None, config: Path | None = None):
        self.config = config  # a langgraph.json other than the repository's
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "LANGGRAPH_", "LOOM_", "OPENAI_"))}
        self.env = env | {
            "LANGSMITH_TRACING": "false",
            "LANGCHAIN_TRACING_V2": "false",
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",   # else the CLI POSTs usage data to supabase on every command
            "LANGGRAPH_NO_VERSION_CHECK": "true",  # else langgraph-api asks pypi.org for a newer version
            "PYTHONUNBUFFERED": "1",
        }
        if llm_url is not None:  # else: nothing configured, as after the README's first command
            self.env |= {"LOOM_LLM_BASE_URL": llm_url, "LOOM_LLM_API_KEY": "x", "LOOM_LLM_MODEL": "scripted",
                         "LOOM_LLM_TIMEOUT": "10", "LOOM_LLM_MAX_RETRIES": "0"}
        self.process: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    def start(self) -> Studio:
        command = [str(LANGGRAPH), "dev", "--host", "127.0.0.1", "--port", str(self.port),
                   "--no-browser", "--no-reload", *(["--config", str(self.config)] if self.config else [])]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            # `langgraph dev` resolves graph paths from where it runs: the project's folder.
            folder = self.config.parent if self.config else REPO
            self.process = subprocess.Popen(command, cwd=folder, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = started + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"langgraph dev exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ok", timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"langgraph dev was not ready within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self, tail: int = 20_000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return ANSI.sub("", text)[-tail:]

    @contextmanager
    def log_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            exc.add_note(f"--- langgraph dev output ({self.log_path}) ---\n{self.log()}")
            raise


@pytest.fixture(scope="module")
def studio(llm, tmp_path_factory) -> Iterator[Studio]:
    persistence_existed = PERSISTENCE_DIR.exists()
    server = Studio(tmp_path_factory.mktemp("studio") / "langgraph-dev.log", llm.url).start()
    yield server
    server.stop()
    if not persistence_existed:  # leave the checkout as we found it
        shutil.rmtree(PERSISTENCE_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def client(studio):
    return get_sync_client(url=studio.url, api_key=None, timeout=30)


@pytest.fixture(scope="module")
def agent_id(client) -> str:
    """The assistant `langgraph dev` creates for the `agent` graph (schemas take only a UUID, not a graph id)."""
    [assistant] = client.assistants.search(graph_id="agent", metadata={"created_by": "system"})
    return assistant["assistant_id"]


def test_every_graph_is_an_assistant_studio_can_render(studio, client):
    with studio.log_on_failure():
        assistants = client.assistants.search(limit=100)
        by_graph = {a["graph_id"]: a for a in assistants}
        assert set(GRAPHS) <= set(by_graph), f"graphs missing from Studio: {set(GRAPHS) - set(by_graph)}"
        for graph_id, assistant in by_graph.items():
            # What Studio fetches to draw a graph and its input/context forms.
            drawing = client.assistants.get_graph(assistant["assistant_id"])
            assert {n["id"] for n in drawing["nodes"]} >= {"__start__", "__end__"}, graph_id
            schemas = client.assistants.get_schemas(assistant["assistant_id"])
            assert schemas["graph_id"] == graph_id
            assert "messages" in schemas["input_schema"]["properties"], graph_id


def test_agent_exposes_its_runtime_context_schema(studio, client, agent_id):
    with studio.log_on_failure():
        schemas = client.assistants.get_schemas(agent_id)
        context = schemas["context_schema"]
        assert context is not None, schemas
        properties = context["properties"]
        assert {"model", "system_prompt", "max_iterations", "tool_timeout"} <= set(properties), properties
        assert properties["max_iterations"]["type"] == "integer"
        assert properties["max_iterations"]["default"] == 8
        assert properties["tool_timeout"]["type"] == "number"
        assert properties["system_prompt"]["description"] == "System prompt."
        drawing = client.assistants.get_graph(agent_id)
        assert {"call_model", "dispatch_tools"} <= {n["id"] for n in drawing["nodes"]}


def test_agent_runs_a_tool_turn_with_run_context(studio, client, llm):
    llm.script(
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
        {"text": "6*7 is 42."},
    )
    with studio.log_on_failure():
        thread = client.threads.create()
        started = time.monotonic()
        result = client.runs.wait(
            thread["thread_id"], "agent",
            input={"messages": [{"role": "user", "content": "what is 6*7"}]},
            context={"max_iterations": 3, "system_prompt": "You are tested from Studio."},
            raise_error=True,
        )
        run_seconds = time.monotonic() - started
        assert result["messages"][-1]["content"] == "6*7 is 42.", result

        state = client.threads.get_state(thread["thread_id"])
        messages = state["values"]["messages"]
        assert [m["type"] for m in messages] == ["human", "ai", "tool", "ai"], messages
        call = messages[1]["tool_calls"][0]
        assert (call["name"], call["args"]) == ("calculator", {"expression": "6*7"})
        assert messages[2]["tool_call_id"] == call["id"]
        assert messages[2]["content"] == "42"
        assert messages[3]["content"] == "6*7 is 42."
        assert state["next"] == []

        runs = client.runs.list(thread["thread_id"])
        assert [r["status"] for r in runs] == ["success"]
        assert runs[0]["kwargs"]["context"]["max_iterations"] == 3

        requests = llm.requests()
        assert len(requests) == 2, requests
        for request in requests:  # the run context reached the graph: its system prompt went to the model
            system = request["body"]["messages"][0]
            assert system == {"role": "system", "content": "You are tested from Studio."}, system
            assert request["body"]["model"] == "scripted"
        assert requests[1]["body"]["messages"][-1]["content"] == "42"
    print(f"langgraph dev ready in {studio.startup_seconds:.1f} s; tool turn ran in {run_seconds:.2f} s")


def test_moa_runs_with_proposers_set_in_the_run_context(studio, client, llm):
    llm.set_model("p1", text="idea one")
    llm.set_model("p2", text="idea two")
    llm.set_model("agg", text="Both ideas, combined.")
    with studio.log_on_failure():
        [assistant] = client.assistants.search(graph_id="moa", metadata={"created_by": "system"})
        context = client.assistants.get_schemas(assistant["assistant_id"])["context_schema"]
        assert {"proposers", "aggregator_model", "layers", "proposer_deadline"} <= set(context["properties"])
        thread = client.threads.create()
        result = client.runs.wait(
            thread["thread_id"], "moa", input={"messages": [{"role": "user", "content": "ideas?"}]},
            # Studio hands nested settings over as plain dicts
            context={"proposers": [{"model": "p1"}, {"model": "p2", "temperature": 0.2}], "aggregator_model": "agg"},
            raise_error=True,
        )
        assert [(m["type"], m["content"]) for m in result["messages"]] == [
            ("human", "ideas?"), ("ai", "Both ideas, combined.")]
        assert sorted(p["answer"] for p in result["proposals"]) == ["idea one", "idea two"]
        assert [r["body"]["temperature"] for r in llm.requests() if r["model"] == "p2"] == [0.2]


def test_memory_graph_keeps_memories_in_the_studio_store(studio, client, llm):
    llm.script({"tool_calls": [{"name": "save_memory", "arguments": {"content": "I am learning the cello."}}]},
               {"text": "Noted."}, {"text": "You are learning the cello."})
    with studio.log_on_failure():
        context = {"auto_save": False, "recall": 3}
        first = client.runs.wait(client.threads.create()["thread_id"], "memory", context=context,
                                 input={"messages": [{"role": "user", "content": "Remember: I learn the cello."}]},
                                 raise_error=True)
        saved = json.loads(first["messages"][2]["content"])["saved"]
        assert saved["content"] == "I am learning the cello."
        # A new thread: the memory lives in Studio's store, not in the thread, and is recalled into the prompt.
        second = client.runs.wait(client.threads.create()["thread_id"], "memory", context=context,
                                  input={"messages": [{"role": "user", "content": "Which instrument do I learn?"}]},
                                  raise_error=True)
        assert second["recalled"][0]["id"] == saved["id"]
        assert f"[{saved['id']}] I am learning the cello." in llm.requests()[-1]["body"]["messages"][0]["content"]
