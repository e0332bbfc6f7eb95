"""AG-UI shared state: the graph's input keys beyond `messages`, seen and edited by the client.

`RunAgentInput.state` carries the client's view. Keys must be input keys of the graph (unknown -> 422) and
their values are validated against the input schema; values that differ from the thread's go into the graph
input. A STATE_SNAPSHOT opens the run when the client's view is stale; STATE_DELTA (RFC 6902 JSON Patch)
follows each top-level step that changed a shared key. Messages travel as messages, never as state.

Graphs whose input has no key beyond `messages` share nothing and their stream carries no state events. A graph
keeps internal keys private by declaring an `input_schema` without them (loom's own graphs do).
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
from langgraph.graph.state import StateGraph
from langgraph.managed.base import is_managed_value
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from loom.adapters.agui.outbound import _event

MAX_VALUE_BYTES = 64 * 1024  # a shared value larger than this (JSON) is left out of the client's view

Event = dict[str, Any]  # wire form, as adapters/agui/outbound.py builds them


class StateError(ValueError):
    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SharedKeys:
    """The keys a graph shares, each with a validator built from its input-schema annotation."""

    validators: dict[str, TypeAdapter]

    @classmethod
    def of(cls, builder: StateGraph) -> SharedKeys | None:
        schema = builder.input_schema
        channels = builder.schemas.get(schema, {})
        try:
            hints = typing.get_type_hints(schema, include_extras=True)
        except Exception:  # noqa: BLE001 — unresolvable annotations: accept any JSON value
            hints = {}
        validators = {}
        for key, channel in channels.items():
            if key == "messages" or key.startswith("_") or is_managed_value(channel):
                continue
            try:
                validators[key] = TypeAdapter(hints.get(key, Any))
            except Exception:  # noqa: BLE001 — a type pydantic cannot check: accept any value
                validators[key] = TypeAdapter(Any)
        return cls(validators) if validators else None

    def validate(self, state: Any) -> dict[str, Any]:
        """The client's state, checked: an object of shared keys with values of their declared types."""
        if state is None:
            return {}
        if not isinstance(state, dict):
            raise StateError("state must be an object", "state")
        out = {}
        for key, value in state.items():
            adapter = self.validators.get(key)
            if adapter is None:
                allowed = ", ".join(sorted(self.validators))
                raise StateError(f"state.{key}: not an input key of this graph (shared keys: {allowed})",
                                 f"state.{key}")
            try:
                out[key] = adapter.validate_python(value)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error["loc"])
                raise StateError(f"state.{key}{where}: {error['msg']}", f"state.{key}") from None
        return out

    def view(self, values: dict[str, Any] | None) -> dict[str, Any]:
        """The JSON the client sees of a graph state: shared keys present in it, oversized values left out."""
        out = {}
        for key in self.validators:
            if values and key in values:
                value = to_jsonable_python(values[key], fallback=str)
                if len(json.dumps(value, default=str)) <= MAX_VALUE_BYTES:
                    out[key] = value
        return out


@dataclass
class StateSync:
    """One run's shared state: what the client holds, and the events that keep it equal to the graph's."""

    keys: SharedKeys
    client_view: dict[str, Any]
    graph_view: dict[str, Any]
    sent: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.sent = self.client_view

    @classmethod
    def prepare(cls, keys: SharedKeys, client_state: Any, stored: dict | None) -> tuple[StateSync, dict[str, Any]]:
        """(sync, the graph input's state update: client values that differ from the thread's)."""
        sent = keys.validate(client_state)
        stored_view = keys.view(stored)
        client_view = keys.view(sent)
        update = {k: sent[k] for k in sent if client_view.get(k) != stored_view.get(k)}
        return cls(keys, client_view, {**stored_view, **client_view}), update

    def opening(self) -> list[Event]:
        """STATE_SNAPSHOT when the client's view is not the state the run starts from."""
        if self.graph_view == self.client_view:
            return []
        self.sent = self.graph_view
        return [_event("STATE_SNAPSHOT", snapshot=self.graph_view)]

    def feed(self, part: dict) -> list[Event]:
        """STATE_DELTA for a top-level `values` part that changed a shared key."""
        if part["type"] != "values" or part.get("ns") or not isinstance(part["data"], dict):
            return []
        view = self.keys.view(part["data"])
        patch = jsonpatch.make_patch(self.sent, view).patch
        if not patch:
            return []
        self.sent = view
        return [_event("STATE_DELTA", delta=patch)]
