"""The graphs loom serves, read from langgraph.json (the same registry LangGraph Studio uses)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

from langgraph.graph.state import CompiledStateGraph, StateGraph
from langgraph.pregel import Pregel
from loom.graphs.context import SERVER_FIELDS
from pydantic import TypeAdapter

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class GraphEntry:
    name: str
    description: str
    builder: StateGraph
    graph: CompiledStateGraph  # compiled with the server's checkpointer and store

    @property
    def context_schema(self) -> type | None:
        return self.builder.context_schema

    @cached_property
    def context_json_schema(self) -> dict[str, Any]:
        """JSON schema of the settings a client may change (computed once: pydantic schemas are slow)."""
        schema = self.context_schema
        if schema is None or not dataclasses.is_dataclass(schema):
            return {"type": "object", "properties": {}}
        full = TypeAdapter(schema).json_schema()
        descriptions = {f.name: f.metadata.get("description") for f in dataclasses.fields(schema)}
        properties = {}
        for name, prop in full.get("properties", {}).items():
            if name in SERVER_FIELDS:
                continue
            if descriptions.get(name):
                prop = {**prop, "description": descriptions[name]}
            properties[name] = prop
        return {"type": "object", "title": full.get("title", schema.__name__), "properties": properties}


def registry_path() -> Path:
    """LOOM_GRAPHS, else ./langgraph.json, else the one beside loom's own graphs (an editable checkout)."""
    if configured := os.environ.get("LOOM_GRAPHS"):
        return Path(configured)
    local = Path.cwd() / "langgraph.json"
    return local if local.exists() else REPO_ROOT / "langgraph.json"


class GraphLoadError(RuntimeError):
    """A graph listed in langgraph.json cannot be loaded; the message names the graph and the cause."""


def load_builders(path: Path | None = None) -> dict[str, tuple[StateGraph, str, dict]]:
    """name -> (builder, description, run config) for every graph in langgraph.json.

    A graph is named as LangGraph's own server names it, `./path/file.py:attr`, relative to the file; `attr` is
    a compiled graph, a StateGraph or a factory returning either. The run config is the one the exported graph
    carries (e.g. `.with_config(recursion_limit=...)`), so Studio and loom run a graph with the same settings.
    """
    path = (path or registry_path()).resolve()
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GraphLoadError(f"cannot read the graph registry {path}: {exc}") from exc
    for dependency in spec.get("dependencies", []):  # local packages the graphs import, as `langgraph dev` does
        folder = str((path.parent / dependency).resolve())
        if Path(folder).is_dir() and folder not in sys.path:
            sys.path.append(folder)
    out: dict[str, tuple[StateGraph, str, dict]] = {}
    for name, target in spec["graphs"].items():
        where = target["path"] if isinstance(target, dict) else target
        try:
            module, exported = _load(path.parent, where)
        except Exception as exc:
            raise GraphLoadError(f"graph {name!r} ({where}) failed to load: {type(exc).__name__}: {exc}") from exc
        description = (module.__doc__ or name).strip().splitlines()[0]
        if isinstance(target, dict) and target.get("description"):
            description = target["description"]
        builder = exported if isinstance(exported, StateGraph) else exported.builder
        out[name] = (builder, description, dict(getattr(exported, "config", None) or {}))
    return out


def _load(root: Path, where: str) -> tuple[ModuleType, Any]:
    file, _, attr = where.partition(":")
    module = _import_file((root / file).resolve())
    exported = getattr(module, attr or "graph")
    if callable(exported) and not isinstance(exported, (StateGraph, Pregel)):  # a factory
        exported = exported(*([{}] if inspect.signature(exported).parameters else []))
    if not isinstance(exported, (StateGraph, Pregel)) or not isinstance(getattr(exported, "builder", exported),
                                                                        StateGraph):
        raise TypeError(f"{where} is a {type(exported).__name__}, not a compiled graph, StateGraph or factory")
    return module, exported


def _import_file(file: Path) -> ModuleType:
    """Import a graph's file; loom's own modules by their package name, so each is loaded once."""
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


def compile_all(checkpointer, store, path: Path | None = None) -> dict[str, GraphEntry]:
    entries = {}
    for name, (builder, description, config) in load_builders(path).items():
        graph = builder.compile(checkpointer=checkpointer, store=store, name=name)
        entries[name] = GraphEntry(name, description, builder, graph.with_config(config) if config else graph)
    return entries
