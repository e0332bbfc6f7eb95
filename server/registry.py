"""The graphs loom serves, read from langgraph.json (the same registry LangGraph Studio uses)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from langgraph.graph.state import CompiledStateGraph, StateGraph
from langgraph.pregel import Pregel

from loom.adapters.agui.context import context_json_schema
from loom.adapters.agui.state import SharedKeys
from loom.server.graph_loading import Factory, add_dependencies, apply_env, load_target

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class GraphEntry:
    name: str
    description: str
    builder: StateGraph
    graph: CompiledStateGraph  # compiled with the server's checkpointer and store
    factory: Factory | None = None  # a graph made by a factory is made again for every run
    options: dict = field(default_factory=dict)  # breakpoints the exported graph was compiled with

    @asynccontextmanager
    async def run_graph(self, config: dict, context: Any) -> AsyncIterator[Pregel]:
        """The graph one run executes: `graph`, or what the factory makes for this run, held for its length."""
        if self.factory is None:
            yield self.graph
            return
        factory_config = {key: config[key] for key in ("configurable", "metadata") if key in config}
        async with self.factory.run_graph(factory_config, context, self.graph.store) as made:
            if isinstance(made, StateGraph):
                yield made.compile(checkpointer=self.graph.checkpointer, store=self.graph.store, name=self.name,
                                   interrupt_before=self.options.get("interrupt_before_nodes"),
                                   interrupt_after=self.options.get("interrupt_after_nodes"))
            else:
                yield made.copy(update={"checkpointer": self.graph.checkpointer, "store": self.graph.store,
                                        "name": self.name})

    @property
    def context_schema(self) -> type | None:
        return self.builder.context_schema

    @cached_property
    def context_json_schema(self) -> dict[str, Any]:
        """JSON schema of the settings a client may change (computed once: pydantic schemas are slow)."""
        return context_json_schema(self.context_schema)

    @cached_property
    def shared_keys(self) -> SharedKeys | None:
        """The state keys AG-UI shares with clients (None: the graph shares no state)."""
        return SharedKeys.of(self.builder)


# loom's own graphs, by module, so an installed loom serves them beside a user's langgraph.json.
BUILTIN_GRAPHS = {name: f"loom.graphs.{name}:graph" for name in ("agent", "moa", "memory", "letta")}


def registry_path() -> Path:
    """LOOM_GRAPHS, else ./langgraph.json, else the one beside loom's own graphs (an editable checkout)."""
    if configured := os.environ.get("LOOM_GRAPHS"):
        return Path(configured)
    local = Path.cwd() / "langgraph.json"
    return local if local.exists() else REPO_ROOT / "langgraph.json"


def builtin_graphs_enabled() -> bool:
    """LOOM_BUILTIN_GRAPHS (default true): serve loom's own graphs beside a user's langgraph.json."""
    value = os.environ.get("LOOM_BUILTIN_GRAPHS", "true").strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise GraphLoadError(f"LOOM_BUILTIN_GRAPHS must be true or false, not {value!r}")
    return value in ("1", "true", "yes", "on")


class GraphLoadError(RuntimeError):
    """A graph listed in langgraph.json cannot be loaded; the message names the graph and the cause."""


Loaded = dict[str, tuple[StateGraph, str, dict]]  # name -> (builder, description, compile options)
_loaded: dict[tuple[Path, bool], Loaded] = {}


def load_builders(path: Path | None = None) -> Loaded:
    """name -> (builder, description, run config) for every graph in langgraph.json, plus loom's own.

    A graph is named as LangGraph's own server names it, `./path/file.py:attr` relative to the file (or
    `package.module:attr`); `attr` is a compiled graph, a StateGraph or a factory returning either (see
    graph_loading). The run config is the one the exported graph carries (e.g. `.with_config(recursion_limit=...)`),
    so Studio and loom run a graph with the same settings. Loaded once per process; a factory is called here
    for the graph's shape, and again per run (the options' `factory`).
    """
    path = (path or registry_path()).resolve()
    key = (path, builtin_graphs_enabled())
    if key not in _loaded:
        _loaded[key] = _load_registry(path, include_builtins=key[1])
    return _loaded[key]


def _load_registry(path: Path, include_builtins: bool) -> Loaded:
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GraphLoadError(f"cannot read the graph registry {path}: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("graphs"), dict) or not spec["graphs"]:
        raise GraphLoadError(f"{path}: `graphs` must be an object naming at least one graph")
    try:
        apply_env(path.parent, spec.get("env"))
    except (OSError, TypeError, ValueError) as exc:
        raise GraphLoadError(f"{path}: env: {exc}") from exc
    add_dependencies(path.parent, spec.get("dependencies", []))
    targets = dict(spec["graphs"])
    if include_builtins:
        for name, where in BUILTIN_GRAPHS.items():  # the user's graph of the same name wins
            targets.setdefault(name, where)
    out: Loaded = {}
    for name, target in targets.items():
        where = target.get("path") if isinstance(target, dict) else target
        if not isinstance(where, str) or not where:
            raise GraphLoadError(f"graph {name!r} in {path}: expected \"./file.py:attr\" or {{\"path\": ...}}")
        try:
            module, exported, factory = load_target(path.parent, where)
        except Exception as exc:
            raise GraphLoadError(f"graph {name!r} ({where}) failed to load: {type(exc).__name__}: {exc}") from exc
        description = (module.__doc__ or name).strip().splitlines()[0]
        if isinstance(target, dict) and target.get("description"):
            description = target["description"]
        builder = exported if isinstance(exported, StateGraph) else exported.builder
        out[name] = (builder, description, {**_compile_options(exported), "factory": factory})
    return out


def _compile_options(exported: StateGraph | Pregel) -> dict:
    """What the exported graph was compiled with and loom's compile must keep: its run config, breakpoints."""
    options = {"config": dict(getattr(exported, "config", None) or {})}
    for attr in ("interrupt_before_nodes", "interrupt_after_nodes"):
        if getattr(exported, attr, None):
            options[attr] = list(getattr(exported, attr))
    return options


def compile_all(checkpointer, store, path: Path | None = None) -> dict[str, GraphEntry]:
    entries = {}
    for name, (builder, description, options) in load_builders(path).items():
        graph = builder.compile(checkpointer=checkpointer, store=store, name=name,
                                interrupt_before=options.get("interrupt_before_nodes"),
                                interrupt_after=options.get("interrupt_after_nodes"))
        config = options["config"]
        entries[name] = GraphEntry(name, description, builder, graph.with_config(config) if config else graph,
                                   options.get("factory"), options)
        entries[name].shared_keys  # noqa: B018 — validators are built at start-up, not on a request
    return entries
