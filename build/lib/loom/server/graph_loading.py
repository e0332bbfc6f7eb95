"""Import one graph the way LangGraph's own server does: `./path/file.py:attr` or `package.module:attr`.

`attr` is a compiled graph, a StateGraph, or a factory returning either: sync or async, taking nothing or a
RunnableConfig. loom calls a factory once, at start-up (LangGraph's server may call it per run), and compiles
the builder it yields with loom's own checkpointer and store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from langgraph.graph.state import StateGraph
from langgraph.pregel import Pregel

# What a factory taking a config receives at start-up: no run exists yet, so nothing is configured.
STARTUP_CONFIG: dict[str, Any] = {"configurable": {}, "metadata": {}, "tags": []}


def load_target(root: Path, where: str) -> tuple[ModuleType, StateGraph | Pregel]:
    """(module, exported graph) for one langgraph.json entry; raises whatever importing or the factory raises."""
    location, _, attr = where.rpartition(":") if ":" in where else (where, "", "graph")
    module = _import_location(root, location)
    if not hasattr(module, attr):
        raise AttributeError(f"{location} has no attribute {attr!r}")
    exported = getattr(module, attr)
    if callable(exported) and not isinstance(exported, (StateGraph, Pregel)):
        exported = call_factory(exported)
    if not isinstance(exported, (StateGraph, Pregel)) or not isinstance(getattr(exported, "builder", exported),
                                                                        StateGraph):
        raise TypeError(f"{where} is a {type(exported).__name__}, not a compiled graph, StateGraph or factory "
                        "returning one")
    return module, exported


def call_factory(factory: Any) -> Any:
    """The factory's graph. A config parameter gets STARTUP_CONFIG; an async factory runs on its own loop."""
    params = [p for p in inspect.signature(factory).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(params) > 1:
        raise TypeError(f"factory {factory.__name__} takes {len(params)} arguments; LangGraph factories take none "
                        "or a RunnableConfig")
    result = factory(*([dict(STARTUP_CONFIG)] if params else []))
    if inspect.isawaitable(result):
        result = _run_coroutine(result)
    return result


def _run_coroutine(awaitable: Any) -> Any:
    async def wait():
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    # Called from the server's start-up, inside its loop: a worker thread with a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def _import_location(root: Path, location: str) -> ModuleType:
    if location.endswith(".py") or "/" in location or "\\" in location:
        return import_file((root / location).resolve())
    return importlib.import_module(location)  # `package.module`, importable from `dependencies` or installed


def import_file(file: Path) -> ModuleType:
    """Import a graph's file; loom's own modules by their package name, so each is loaded once."""
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {file}")
    for package in ("loom.graphs", "loom.adapters"):
        folder = Path(importlib.import_module(package).__path__[0]).resolve()
        if file.is_relative_to(folder):
            return importlib.import_module(".".join([package, *file.relative_to(folder).with_suffix("").parts]))
    name = "loom_user_graph_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"no Python module at {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def apply_env(root: Path, env: str | Mapping[str, Any] | None) -> None:
    """langgraph.json's `env`: a .env file (relative to it) or a mapping. Variables already set win."""
    if not env:
        return
    if isinstance(env, str):
        from dotenv import dotenv_values

        file = (root / env).resolve()
        if not file.is_file():
            raise FileNotFoundError(f"env file {file} (langgraph.json `env`) does not exist")
        values = {k: v for k, v in dotenv_values(file).items() if v is not None}
    elif isinstance(env, Mapping):
        values = {str(k): str(v) for k, v in env.items()}
    else:
        raise TypeError(f"`env` must be a file path or an object, not {type(env).__name__}")
    for key, value in values.items():
        os.environ.setdefault(key, value)


def add_dependencies(root: Path, dependencies: list[str]) -> None:
    """Local packages the graphs import go on sys.path, as `langgraph dev` installs them."""
    for dependency in dependencies:
        folder = str((root / dependency).resolve())
        if Path(folder).is_dir() and folder not in sys.path:
            sys.path.append(folder)
