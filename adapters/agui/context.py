"""A graph's settings, whatever its context schema is: a dataclass, a TypedDict, a pydantic model, or none.

Clients change them in `forwardedProps.context`. They reach the graph twice: as the runtime context (validated
against `context_schema`) and in `config["configurable"]`, where graphs written before LangGraph's runtime
context (`config_schema`, `config["configurable"]["model"]`) read them.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any

import typing_extensions
from ag_ui.core import RunAgentInput
from pydantic import BaseModel, TypeAdapter

from loom.graphs.context import SERVER_FIELDS

# configurable keys LangGraph or loom set per run; a client setting them would take over the thread or user.
RESERVED_CONFIGURABLE = frozenset({"thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map", "run_id",
                                   "assistant_id", "graph_id"}) | SERVER_FIELDS


class ContextError(ValueError):
    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def context_fields(schema: type) -> set[str]:
    """The field names of a context schema of any supported kind."""
    if dataclasses.is_dataclass(schema):
        return {f.name for f in dataclasses.fields(schema)}
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return set(schema.model_fields)
    if typing.is_typeddict(schema):
        return set(typing.get_type_hints(schema))
    raise TypeError(f"context schema {schema!r} is not a dataclass, TypedDict or pydantic model")


def pydantic_type(schema: type) -> Any:
    """The schema as pydantic can validate it: on Python < 3.12 pydantic refuses `typing.TypedDict`, the kind
    LangGraph's docs use, so such a class is rebuilt as the equivalent `typing_extensions.TypedDict`."""
    if not typing.is_typeddict(schema) or type(schema).__module__ != "typing" or sys.version_info >= (3, 12):
        return schema
    required = getattr(schema, "__required_keys__", frozenset())
    fields = {name: typing_extensions.Required[hint] if name in required else typing_extensions.NotRequired[hint]
              for name, hint in typing.get_type_hints(schema, include_extras=True).items()}
    return typing_extensions.TypedDict(schema.__name__, fields)


def context_overrides(run: RunAgentInput) -> dict[str, Any]:
    """`forwardedProps.context` as an object ({} when absent)."""
    props = run.forwarded_props if isinstance(run.forwarded_props, dict) else {}
    overrides = props.get("context") or {}
    if not isinstance(overrides, dict):
        raise ContextError("forwardedProps.context must be an object", "forwardedProps.context")
    return overrides


def configurable_values(run: RunAgentInput) -> dict[str, Any]:
    """The client's settings for `config["configurable"]`, without the keys the server owns."""
    overrides = context_overrides(run)
    for key in overrides:
        if key in RESERVED_CONFIGURABLE or key.startswith("__"):
            raise ContextError(f"forwardedProps.context.{key}: set by the server, not by the client",
                               f"forwardedProps.context.{key}")
    return overrides


def context_json_schema(schema: type | None) -> dict[str, Any]:
    """JSON schema of the settings a client may change (the server's own fields left out)."""
    if schema is None:
        return {"type": "object", "properties": {}}
    try:
        full = TypeAdapter(pydantic_type(schema)).json_schema()
    except Exception:  # noqa: BLE001 — a schema pydantic cannot describe still runs; it just offers no settings
        return {"type": "object", "properties": {}}
    descriptions = ({f.name: f.metadata.get("description") for f in dataclasses.fields(schema)}
                    if dataclasses.is_dataclass(schema) else {})
    properties = {}
    for name, prop in full.get("properties", {}).items():
        if name in SERVER_FIELDS:
            continue
        if descriptions.get(name):
            prop = {**prop, "description": descriptions[name]}
        properties[name] = prop
    out = {"type": "object", "title": full.get("title", getattr(schema, "__name__", "Context")),
           "properties": properties}
    if "$defs" in full:
        out["$defs"] = full["$defs"]
    return out
