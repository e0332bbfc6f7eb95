"""AG-UI shared state, unit level (adapters/agui/state.py): which keys a graph shares, the client's state checked
against the input schema, and the snapshot / JSON Patch deltas that keep the client's copy equal to the graph's."""

from __future__ import annotations

import jsonpatch
import pytest
from langchain_core.messages import HumanMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.managed import RemainingSteps

from loom.adapters.agui.state import MAX_VALUE_BYTES, SharedKeys, StateError, StateSync


class Notes(MessagesState):
    topic: str
    notes: list[str]
    remaining_steps: RemainingSteps


def builder(state: type, **kwargs) -> StateGraph:
    return StateGraph(state, **kwargs).add_node("n", lambda s: {}).add_edge(START, "n")


NOTES = SharedKeys.of(builder(Notes))


def test_shared_keys_are_input_keys_beyond_messages_and_managed_values():
    assert set(NOTES.validators) == {"topic", "notes"}
    assert SharedKeys.of(builder(MessagesState)) is None
    assert SharedKeys.of(builder(Notes, input_schema=MessagesState)) is None  # internal keys kept private


def test_client_state_is_checked_against_the_input_schema():
    assert NOTES.validate({"topic": "tea"}) == {"topic": "tea"}
    assert NOTES.validate(None) == {}
    with pytest.raises(StateError) as unknown:
        NOTES.validate({"topic": "tea", "secret": 1})
    assert unknown.value.field == "state.secret" and "shared keys: notes, topic" in str(unknown.value)
    with pytest.raises(StateError) as wrong:
        NOTES.validate({"notes": ["ok", {"not": "a string"}]})
    assert wrong.value.field == "state.notes" and str(wrong.value).startswith("state.notes[1]:")
    with pytest.raises(StateError, match="state must be an object"):
        NOTES.validate(["topic"])


def test_the_view_is_json_and_bounded():
    view = NOTES.view({"topic": HumanMessage("hi", id="m1"), "notes": ["x" * (MAX_VALUE_BYTES + 1)],
                       "messages": [HumanMessage("never shared")]})
    assert view["topic"]["content"] == "hi" and view["topic"]["id"] == "m1"
    assert "notes" not in view and "messages" not in view  # too large, and not state


def test_snapshot_only_when_the_client_is_stale_then_patches_that_apply():
    sync, update = StateSync.prepare(NOTES, {"topic": "tea"}, {"topic": "tea", "notes": ["a"], "messages": []})
    assert update == {}  # nothing the graph does not already hold
    [snapshot] = sync.opening()
    assert snapshot["type"] == "STATE_SNAPSHOT" and snapshot["snapshot"] == {"topic": "tea", "notes": ["a"]}
    client = snapshot["snapshot"]
    assert sync.feed({"type": "values", "ns": ("sub:1",), "data": {"topic": "ignored"}}) == []  # a subgraph's
    assert sync.feed({"type": "messages", "ns": (), "data": ()}) == []
    graph = {"topic": "coffee", "notes": ["a", "b"], "messages": [HumanMessage("x")]}
    [delta] = sync.feed({"type": "values", "ns": (), "data": graph})
    assert delta["type"] == "STATE_DELTA"
    assert jsonpatch.apply_patch(client, delta["delta"]) == {"topic": "coffee", "notes": ["a", "b"]}
    assert sync.feed({"type": "values", "ns": (), "data": graph}) == []  # unchanged: nothing sent

    fresh, update = StateSync.prepare(NOTES, {"topic": "tea"}, None)
    assert update == {"topic": "tea"} and fresh.opening() == []  # the client's view is the starting state
