"""langgraph.json loaded as LangGraph loads it: every kind of export, `env`, `dependencies`, loom's own graphs
beside a user's, and one clear error per way a graph can fail to load (also as `loom serve --config` prints it)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from loom.server.registry import BUILTIN_GRAPHS, GraphLoadError, load_builders
from tests.conftest import BIN, REPO
from tests.llm_server import free_port

GRAPHS_PY = """
    import os
    from contextlib import contextmanager

    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph_sdk.runtime import ServerRuntime

    FROM_ENV = os.environ["LOADING_TEST_FROM_FILE"]  # read at import: `env` is applied before


    def _builder():
        return StateGraph(MessagesState).add_node("reply", lambda state: {}).add_edge(START, "reply")


    compiled = _builder().compile()
    builder = _builder()


    def make():
        return _builder().compile()


    async def make_async(config: RunnableConfig):
        assert config["configurable"] == {}
        return _builder()


    def make_for(runtime: ServerRuntime):
        assert runtime.access_context == "assistants.read" and runtime.execution_runtime is None
        return _builder()


    @contextmanager
    def make_held(runtime: "ServerRuntime", config: RunnableConfig):
        yield _builder().compile()


    def make_three(a, b, c):
        return _builder()


    def broken():
        raise RuntimeError("the model key is missing")


    not_a_graph = 42
"""


def project(tmp_path: Path, graphs: dict, env=None) -> Path:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "graphs.py").write_text(textwrap.dedent(GRAPHS_PY))
    (tmp_path / ".env").write_text("LOADING_TEST_FROM_FILE=from-file\nLOADING_TEST_PRESET=from-file\n")
    spec = {"dependencies": ["."], "graphs": graphs, "env": ".env" if env is None else env}
    (tmp_path / "langgraph.json").write_text(json.dumps(spec))
    return tmp_path / "langgraph.json"


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.setenv("LOOM_BUILTIN_GRAPHS", "false")
    monkeypatch.setenv("LOADING_TEST_PRESET", "from-environment")
    yield
    os.environ.pop("LOADING_TEST_FROM_FILE", None)


async def test_every_export_langgraph_accepts_loads(tmp_path, clean_env):
    path = project(tmp_path, {
        "compiled": "./mypkg/graphs.py:compiled",
        "builder": "./mypkg/graphs.py:builder",
        "factory": "./mypkg/graphs.py:make",
        "async_factory": {"path": "./mypkg/graphs.py:make_async", "description": "Made by an async factory."},
        "by_module": "mypkg.graphs:compiled",
        "runtime_factory": "./mypkg/graphs.py:make_for",
        "held_factory": "./mypkg/graphs.py:make_held",
    })
    loaded = load_builders(path)  # inside a running loop: the async factory gets a loop of its own
    assert set(loaded) == {"compiled", "builder", "factory", "async_factory", "by_module", "runtime_factory",
                           "held_factory"}
    factories = {name for name, (_, _, options) in loaded.items() if options["factory"] is not None}
    assert factories == {"factory", "async_factory", "runtime_factory", "held_factory"}  # made again per run
    assert all("reply" in builder.nodes for builder, _, _ in loaded.values())
    assert loaded["async_factory"][1] == "Made by an async factory."
    assert os.environ["LOADING_TEST_FROM_FILE"] == "from-file"
    assert os.environ["LOADING_TEST_PRESET"] == "from-environment"  # the environment wins over `env`


def test_loom_graphs_are_served_beside_a_users_unless_turned_off(tmp_path, clean_env, monkeypatch):
    path = project(tmp_path, {"mine": "./mypkg/graphs.py:compiled", "agent": "./mypkg/graphs.py:make"},
                   env={"LOADING_TEST_FROM_FILE": "from-mapping"})
    assert set(load_builders(path)) == {"mine", "agent"}
    assert os.environ["LOADING_TEST_FROM_FILE"] == "from-mapping"
    monkeypatch.setenv("LOOM_BUILTIN_GRAPHS", "true")
    both = load_builders(path)
    assert set(both) == {"mine", *BUILTIN_GRAPHS}
    assert "reply" in both["agent"][0].nodes  # the user's graph of the same name wins
    monkeypatch.setenv("LOOM_BUILTIN_GRAPHS", "perhaps")
    with pytest.raises(GraphLoadError, match="LOOM_BUILTIN_GRAPHS must be true or false"):
        load_builders(path)


@pytest.mark.parametrize(("target", "env", "message"), [
    ("./mypkg/missing.py:graph", None, "graph 'g' (./mypkg/missing.py:graph) failed to load: FileNotFoundError"),
    ("./mypkg/graphs.py:nothing", None, "AttributeError: ./mypkg/graphs.py has no attribute 'nothing'"),
    ("./mypkg/graphs.py:not_a_graph", None, "TypeError: ./mypkg/graphs.py:not_a_graph is a int, not a compiled"),
    ("./mypkg/graphs.py:broken", None, "RuntimeError: the model key is missing"),
    ("./mypkg/graphs.py:make_three", None, "TypeError: factory make_three takes (a, b, c); LangGraph factories take "
                                           "nothing, a RunnableConfig, a ServerRuntime, or one of each"),
    ("nopkg.graphs:graph", None, "ModuleNotFoundError: No module named 'nopkg'"),
    ("./mypkg/graphs.py:compiled", "missing.env", "env: env file"),
    ("./mypkg/graphs.py:compiled", ["A=1"], "env: `env` must be a file path or an object, not list"),
])
def test_each_load_failure_names_the_graph_and_the_cause(tmp_path, clean_env, target, env, message):
    with pytest.raises(GraphLoadError) as caught:
        load_builders(project(tmp_path, {"g": target}, env=env))
    assert message in str(caught.value)


def serve(config: Path, port: int, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "LOOM_LLM_BASE_URL": "http://127.0.0.1:9/v1",
                   "LOOM_DATABASE_URL": f"sqlite:///{config.parent / 'loom.db'}", **env}
    return subprocess.Popen([str(BIN / "loom"), "serve", "--config", str(config), "--port", str(port)],
                            cwd=config.parent, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_serve_config_with_a_broken_graph_is_one_line_not_a_traceback(tmp_path):
    process = serve(project(tmp_path, {"g": "./mypkg/graphs.py:broken"}), free_port())
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err.strip() == ("loom cannot start: graph 'g' (./mypkg/graphs.py:broken) failed to load: RuntimeError: "
                           "the model key is missing")
    assert "Traceback" not in out + err


def test_serve_config_serves_exactly_the_users_graphs(tmp_path):
    port = free_port()
    process = serve(project(tmp_path, {"mine": "./mypkg/graphs.py:compiled"}), port, LOOM_BUILTIN_GRAPHS="false")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "loom did not start"
                time.sleep(0.1)
        assert health["graphs"] == ["mine"]
        agents = httpx.get(f"http://127.0.0.1:{port}/agents", timeout=5).json()
        assert agents == [{"name": "mine", "description": "mine", "contextSchema": {"type": "object",
                                                                                   "properties": {}}}]
    finally:
        process.terminate()
        process.communicate(timeout=10)
