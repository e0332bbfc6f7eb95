"""The `memory` graph through loom's AG-UI endpoint (SQLite and PostgreSQL, scripted LLM): recall into the prompt
and the `loom.memory.recalled` event, the four memory tools, auto-save (not streamed), isolation between users in
graph runs, and the official @ag-ui/client + ag-ui-validate on memory runs."""

from __future__ import annotations

import json

from tests.agui_js import run_agui_client
from tests.conftest import assistant_messages, new_id, text_of, user
from tests.memory_fixtures import ALICE_KEY, BOB_KEY, MAX_PER_USER, PROXY_KEY, add, api, fresh_user
from tests.memory_fixtures import memory_loom as memory_loom_fixture
from tests.metrics_scrape import delta, scrape
from tests.test_agui_clients import assert_clean, tool_call

memory_loom = memory_loom_fixture


def run_as(server, who: str, text: str, key: str = PROXY_KEY, **fields) -> list[dict]:
    """One memory turn; with the proxy key, on behalf of `who`."""
    props = fields.pop("forwardedProps", {})
    if key == PROXY_KEY:
        props = {**props, "user": {"id": who}}
    return server.run("memory", [user(text)], headers={"authorization": f"Bearer {key}"}, forwardedProps=props,
                      **fields)


def custom(events: list[dict], name: str) -> list[dict]:
    return [e["value"] for e in events if e["type"] == "CUSTOM" and e["name"] == name]


def tool_results(events: list[dict]) -> list[str]:
    return [e["content"] for e in events if e["type"] == "TOOL_CALL_RESULT"]


def listed(server, who: str, key: str = PROXY_KEY) -> list[dict]:
    return api(server, "GET", "/memories", key, who if key == PROXY_KEY else None).json()["items"]


# ------------------------------------------------------------------------------------------------- recall


def test_recall_fills_the_prompt_and_reports_the_memories(memory_loom, llm):
    who = fresh_user()
    dog = add(memory_loom, "My dog is called Rex.", user=who)
    add(memory_loom, "I work as a nurse.", user=who)
    llm.script({"text": "Your dog is Rex."}, {"text": '{"memories": []}'})
    events = run_as(memory_loom, who, "What is my dog called?")

    (recalled,) = custom(events, "loom.memory.recalled")
    top = recalled["memories"][0]
    assert (top["id"], top["content"], top["tags"]) == (dog["id"], "My dog is called Rex.", [])
    assert 0 < top["score"] <= 1
    types = [e["type"] for e in events]
    assert types.index("CUSTOM") < types.index("TEXT_MESSAGE_START")  # sources before the answer
    assert types[-1] == "RUN_FINISHED"
    # The extraction call of auto-save is not streamed: one assistant message, the answer.
    assert assistant_messages(events) == ["Your dog is Rex."]

    answer, extraction = llm.requests()
    system = answer["body"]["messages"][0]["content"]
    assert f"[{dog['id']}] My dog is called Rex." in system
    assert {t["function"]["name"] for t in answer["body"]["tools"]} == {
        "save_memory", "update_memory", "search_memories", "delete_memory"}
    assert "long-term memory" in extraction["body"]["messages"][0]["content"]
    assert "My dog is called Rex." in extraction["body"]["messages"][1]["content"]  # known facts are not re-saved
    assert "tools" not in extraction["body"]
    assert llm.requests("/v1/embeddings")  # the recall query was embedded (hybrid search)


def test_a_user_without_memories_gets_an_empty_report(memory_loom, llm):
    llm.script({"text": "Hello."}, {"text": '{"memories": []}'})
    events = run_as(memory_loom, fresh_user(), "hi", forwardedProps={"context": {"recall": 3}})
    assert custom(events, "loom.memory.recalled") == [{"memories": []}]
    assert "remember nothing relevant" in llm.requests()[0]["body"]["messages"][0]["content"]


# -------------------------------------------------------------------------------------------------- tools


def test_memory_tools_save_search_update_delete(memory_loom, llm):
    who = fresh_user()
    diet = add(memory_loom, "I am vegetarian.", user=who)
    llm.script({"tool_calls": [tool_call("save_memory", {"content": "My partner is Sam.", "tags": ["family"]}),
                               tool_call("search_memories", {"query": "vegetarian"}),
                               tool_call("update_memory", {"memory_id": diet["id"], "content": "I am vegan."})]},
               {"text": "Noted."})
    before = scrape(memory_loom.url, {"authorization": f"Bearer {PROXY_KEY}"})
    events = run_as(memory_loom, who, "My partner is Sam, and I'm vegan now.")
    after = scrape(memory_loom.url, {"authorization": f"Bearer {PROXY_KEY}"})
    for kind in ("recall", "save", "search", "update"):
        assert delta(before, after, "loom_memory_operations_total", kind=kind) == 1, kind
    assert delta(before, after, "loom_memory_recall_duration_seconds_count") == 1
    assert delta(before, after, "loom_tool_calls_total", tool="save_memory", status="success") == 1
    saved, found, updated = (json.loads(c) for c in tool_results(events))
    assert saved["saved"]["content"] == "My partner is Sam." and saved["saved"]["tags"] == ["family"]
    assert [m["id"] for m in found["memories"]] == [diet["id"]]
    assert updated["updated"] == {**updated["updated"], "id": diet["id"], "content": "I am vegan."}
    assert text_of(events) == "Noted."
    assert len(llm.requests()) == 2  # the model saved this turn itself: no auto-save extraction
    assert {m["content"] for m in listed(memory_loom, who)} == {"My partner is Sam.", "I am vegan."}

    llm.script({"tool_calls": [tool_call("delete_memory", {"memory_id": diet["id"]}),
                               tool_call("delete_memory", {"memory_id": "no-such-memory"})]},
               {"text": "Forgotten."})
    events = run_as(memory_loom, who, "Forget my diet.")
    done, missing = tool_results(events)
    assert json.loads(done) == {"deleted": diet["id"]}
    assert missing == "Error: no memory with id 'no-such-memory'"
    assert [m["content"] for m in listed(memory_loom, who)] == ["My partner is Sam."]


def test_limits_reach_the_model_as_error_results(memory_loom, llm):
    who = fresh_user()
    for i in range(MAX_PER_USER):
        add(memory_loom, f"fact {i}", user=who)
    llm.script({"tool_calls": [tool_call("save_memory", {"content": "one too many"})]},
               {"text": "My memory is full."}, {"text": '{"memories": ["another fact"]}'})
    events = run_as(memory_loom, who, "Remember this too.")
    (result,) = tool_results(events)
    assert result.startswith("Error:") and "LOOM_MEMORY_MAX_PER_USER" in result
    assert text_of(events) == "My memory is full." and events[-1]["type"] == "RUN_FINISHED"
    assert len(listed(memory_loom, who)) == MAX_PER_USER  # auto-save hit the limit too, quietly


# ---------------------------------------------------------------------------------------------- auto-save


def test_auto_save_stores_new_facts_without_streaming_them(memory_loom, llm):
    who = fresh_user()
    add(memory_loom, "I have two cats.", user=who)
    llm.script({"text": "Nice to meet you!"},
               {"text": 'Sure: {"memories": ["I live in Lyon.", "I have two cats.", "I live in Lyon."]}'})
    events = run_as(memory_loom, who, "Hi, I live in Lyon and I have two cats.")
    assert assistant_messages(events) == ["Nice to meet you!"]
    (saved,) = custom(events, "loom.memory.saved")
    assert [m["content"] for m in saved["memories"]] == ["I live in Lyon."]  # known and repeated facts skipped
    assert saved["memories"][0]["tags"] == ["auto"]
    assert sorted(m["content"] for m in listed(memory_loom, who)) == ["I have two cats.", "I live in Lyon."]

    llm.script({"text": "Ok."}, {"text": "I cannot answer in JSON, sorry."})
    events = run_as(memory_loom, who, "I also like jazz.")
    assert custom(events, "loom.memory.saved") == [] and events[-1]["type"] == "RUN_FINISHED"

    llm.script({"text": "Ok."})
    before = len(llm.requests())
    run_as(memory_loom, who, "I like rock too.", forwardedProps={"context": {"auto_save": False}})
    assert len(llm.requests()) == before + 1 and len(listed(memory_loom, who)) == 2


# ---------------------------------------------------------------------------------------------- isolation


def test_graph_runs_only_touch_their_own_users_memories(memory_loom, llm):
    secret = add(memory_loom, "My locker code is 4321.", key=ALICE_KEY)
    llm.script({"tool_calls": [tool_call("search_memories", {"query": "locker code"}),
                               tool_call("delete_memory", {"memory_id": secret["id"]}),
                               tool_call("update_memory", {"memory_id": secret["id"], "content": "0000"})]},
               {"text": "Nothing found."}, {"text": '{"memories": []}'})
    events = run_as(memory_loom, "ignored", "What is my locker code?", key=BOB_KEY)
    assert all("4321" not in m["content"] for r in custom(events, "loom.memory.recalled") for m in r["memories"])
    found, deleted, updated = tool_results(events)
    assert json.loads(found) == {"memories": []}
    assert deleted.startswith("Error: no memory") and updated.startswith("Error: no memory")
    assert all("4321" not in r["body"]["messages"][0]["content"] for r in llm.requests())
    assert api(memory_loom, "GET", f"/memories/{secret['id']}", ALICE_KEY).json()["content"] == secret["content"]

    # A user-bound key cannot run as someone else.
    response, _ = memory_loom.post("memory", {"threadId": new_id(), "runId": new_id(), "messages": [user("hi")],
                                              "forwardedProps": {"user": {"id": memory_loom.alice}}},
                                   {"authorization": f"Bearer {BOB_KEY}"})
    assert response.status_code == 403

    # The proxy names users per run: carol's memories are recalled for carol only.
    carol, dave = fresh_user("carol"), fresh_user("dave")
    add(memory_loom, "My locker code is 9876.", user=carol)
    llm.script({"text": "a"}, {"text": '{"memories": []}'}, {"text": "b"}, {"text": '{"memories": []}'})
    as_carol, as_dave = run_as(memory_loom, carol, "locker code?"), run_as(memory_loom, dave, "locker code?")
    assert [m["content"] for m in custom(as_carol, "loom.memory.recalled")[0]["memories"]] == [
        "My locker code is 9876."]
    assert custom(as_dave, "loom.memory.recalled") == [{"memories": []}]


# ---------------------------------------------------------------------------------------- official client


def test_official_client_and_validator_accept_memory_runs(memory_loom, llm):
    who = fresh_user()
    llm.script({"tool_calls": [tool_call("save_memory", {"content": "I like green tea."})]}, {"text": "Saved."},
               {"text": "You like green tea."}, {"text": '{"memories": ["I drink tea every morning."]}'})
    result = run_agui_client(f"{memory_loom.url}/agents/memory",
                             [{"op": "user", "content": "Remember that I like green tea."},
                              {"op": "user", "content": "I drink it every morning. What do I like?"}],
                             headers={"Authorization": f"Bearer {PROXY_KEY}"}, forwarded_props={"user": {"id": who}})
    assert_clean(result)
    wire = [e for run in result["runs"] for e in run["wireEvents"]]
    names = [e["name"] for e in wire if e["type"] == "CUSTOM"]
    assert names == ["loom.memory.recalled", "loom.memory.recalled", "loom.memory.saved"]
    assert [m["role"] for m in result["messages"]] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert sorted(m["content"] for m in listed(memory_loom, who)) == ["I drink tea every morning.",
                                                                       "I like green tea."]
