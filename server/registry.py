"""The graphs loom serves, read from langgraph.json (the same registry LangGraph Studio uses)."""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from langgraph.graph.state import CompiledStateGraph, StateGraph
from pydantic import TypeAdapter

from graphs.context import SERVER_FIELDS

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
    local = Path.cwd() / "langgraph.json"
    return local if local.exists() else REPO_ROOT / "langgraph.json"


def load_builders(path: Path | None = None) -> dict[str, tuple[StateGraph, str, dict]]:
    """name -> (builder, description, run config) for every graph in langgraph.json.

    The run config is the one the module's exported graph carries (e.g. `.with_config(recursion_limit=...)`),
    so Studio and loom run a graph with the same settings.
    """
    path = path or registry_path()
    spec = json.loads(path.read_text())
    out: dict[str, tuple[StateGraph, str, dict]] = {}
    for name, target in spec["graphs"].items():
        file, _, attr = (target["path"] if isinstance(target, dict) else target).partition(":")
        module_name = ".".join(Path(file).with_suffix("").parts).lstrip(".")
        module = importlib.import_module(module_name)
        description = (module.__doc__ or name).strip().splitlines()[0]
        if isinstance(target, dict) and target.get("description"):
            description = target["description"]
        exported = getattr(module, attr or "graph", None)
        out[name] = (module.builder, description, dict(getattr(exported, "config", None) or {}))
    return out


def compile_all(checkpointer, store, path: Path | None = None) -> dict[str, GraphEntry]:
    entries = {}
    for name, (builder, description, config) in load_builders(path).items():
        graph = builder.compile(checkpointer=checkpointer, store=store, name=name)
        entries[name] = GraphEntry(name, description, builder, graph.with_config(config) if config else graph)
    return entries
