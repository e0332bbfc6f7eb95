"""Graphs written the way their libraries document them (tests/corpus/), served from their own langgraph.json by
`loom serve` under LOOM_GRAPHS, each through the official @ag-ui/client, ag-ui-validate and a second turn."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.agui_js import run_agui_client
from tests.conftest import REPO, LoomServer, new_id, user
from tests.metrics_scrape import delta, scrape
from tests.test_agui_clients import assert_clean, roles, tool_call

CORPUS = REPO / "tests" / "corpus" / "langgraph.json"
CORPUS_GRAPHS = {"react", "create_agent", "supervisor", "swarm", "deep", "notes", "ask_city", "factory", "session",
                 "plain"}


@pytest.fixture(scope="module")
def corpus(llm, tmp_path_factory):
    # The corpus models are plain ChatOpenAI: the OpenAI SDK's own variable points them at the scripted LLM, and
    # the corpus's langgraph.json `env` supplies their API key.
    folder = tmp_path_factory.mktemp("corpus")
    server = LoomServer(folder, LOOM_LLM_BASE_URL=llm.url, LOOM_GRAPHS=str(CORPUS), OPENAI_BASE_URL=llm.url,
                        CORPUS_SESSION_LOG=str(folder / "sessions.jsonl")).start()
    yield server
    server.stop()


def agents(server: LoomServer) -> dict[str, dict]:
    return {a["name"]: a for a in httpx.get(f"{server.url}/agents", timeout=10).json()}


def system_prompt(request: dict) -> str:
    return next(m["content"] for m in request["body"]["messages"] if m["role"] == "system")


def test_user_graphs_and_loom_graphs_are_listed(corpus):
    listed = agents(corpus)
    assert CORPUS_GRAPHS | {"agent", "moa", "memory", "letta"} == set(listed)
    assert listed["notes"]["description"] == "Keeps a topic and notes in its state."
    assert listed["react"]["description"].startswith("A ReAct agent from langgraph.prebuilt")
    # Context schemas of every kind: a TypedDict, a pydantic model, none.
    assert set(listed["create_agent"]["contextSchema"]["properties"]) == {"units"}
    assert listed["notes"]["contextSchema"]["properties"]["tone"]["default"] == "friendly"
    assert listed["plain"]["contextSchema"] == {"type": "object", "properties": {}}


TWO_TURNS = {
    "react": [{"tool_calls": [tool_call("get_weather", {"city": "Oslo"})]}, {"text": "Sunny in Oslo."},
              {"text": "You are welcome."}],
    "create_agent": [{"tool_calls": [tool_call("get_weather", {"city": "Oslo"})]}, {"text": "Sunny in Oslo."},
                     {"text": "You are welcome."}],
    "factory": [{"tool_calls": [tool_call("add", {"a": 2, "b": 3})]}, {"text": "It is 5."}, {"text": "Yes."}],
    "deep": [{"text": "Nothing to plan here."}, {"text": "Still nothing."}],
    "plain": [{"text": "Ahoy there."}, {"text": "Arr."}],
}


@pytest.mark.parametrize("graph", sorted(TWO_TURNS))
def test_two_turns_through_the_official_client(corpus, llm, graph):
    llm.script(*TWO_TURNS[graph])
    result = run_agui_client(f"{corpus.url}/agents/{graph}", [{"op": "user", "content": "first question"},
                                                              {"op": "user", "content": "thanks"}],
                             forwarded_props={"context": {"units": "metric"}} if graph == "create_agent" else None)
    assert_clean(result)
    with_tool = len(TWO_TURNS[graph]) == 3
    first_turn = ["user", "assistant", "tool", "assistant"] if with_tool else ["user", "assistant"]
    assert roles(result["messages"]) == [*first_turn, "user", "assistant"]
    assert result["messages"][-1]["content"] == TWO_TURNS[graph][-1]["text"]
    # The second turn's model call saw the first turn, kept on the thread.
    last_request = [m["role"] for m in llm.requests()[-1]["body"]["messages"] if m["role"] != "system"]
    assert last_request == [*first_turn, "user"]


def test_the_tools_of_a_users_graph_are_counted_in_metrics(corpus, llm):
    # create_react_agent runs its tools in LangGraph's ToolNode, not in loom's tool loop.
    before = scrape(corpus.url)
    llm.script({"tool_calls": [tool_call("get_weather", {"city": "Oslo"})]}, {"text": "Sunny in Oslo."})
    assert corpus.run("react", [user("weather in Oslo?")])[-1]["type"] == "RUN_FINISHED"
    after = scrape(corpus.url)
    assert delta(before, after, "loom_tool_calls_total", tool="get_weather", status="success") == 1


def test_a_factory_makes_each_runs_graph_and_holds_its_resources_for_the_run(corpus, llm):
    sessions = Path(corpus.env["CORPUS_SESSION_LOG"])
    thread = new_id()
    for model in ("model-a", "model-b"):  # each run's graph is made with that run's config
        llm.script({"tool_calls": [tool_call("session_status", {})]}, {"text": "It is open."})
        events = corpus.run("session", [user(f"status with {model}?")], thread_id=thread,
                            forwardedProps={"context": {"model": model}})
        assert events[-1]["type"] == "RUN_FINISHED"
        assert [e["content"] for e in events if e["type"] == "TOOL_CALL_RESULT"] == ["open"]  # open during the run
        assert {r["body"]["model"] for r in llm.requests()[-2:]} == {model}
    # Start-up read the graph's shape without a session; each run opened one and closed it when it ended.
    assert [json.loads(line) for line in sessions.read_text().splitlines()] == [
        {"event": "open", "thread": thread}, {"event": "close", "thread": thread}] * 2


def test_a_factory_that_fails_for_a_run_ends_it_with_an_error_and_frees_the_thread(corpus, llm):
    thread = new_id()
    failed = corpus.run("session", [user("status?")], thread_id=thread,
                        forwardedProps={"context": {"session": "refused"}})
    assert failed[-1] | {"timestamp": 0} == {
        "type": "RUN_ERROR", "timestamp": 0, "code": "GRAPH_FACTORY_FAILED",
        "message": "The graph factory make_graph failed for this run: ConnectionRefusedError: the session server "
                   "refused the connection"}
    llm.script({"text": "Fine now."})
    assert corpus.run("session", [user("status?")], thread_id=thread)[-1]["type"] == "RUN_FINISHED"


def test_old_style_configurable_comes_from_forwarded_context(corpus, llm):
    llm.script({"text": "Arr."})
    events = corpus.run("plain", [user("hi")], forwardedProps={"context": {"style": "pirate"}})
    assert events[-1]["type"] == "RUN_FINISHED"
    assert system_prompt(llm.requests()[-1]) == "Answer in a pirate style."


def test_context_the_server_owns_is_refused(corpus):
    body = {"threadId": new_id(), "runId": new_id(), "messages": [user("hi")],
            "forwardedProps": {"context": {"thread_id": "someone-elses"}}}
    response, _ = corpus.post("plain", body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "forwardedProps.context.thread_id"


def test_pydantic_context_reaches_the_graph(corpus, llm):
    llm.script({"text": "Fine."})
    corpus.run("notes", [user("hi")], forwardedProps={"context": {"tone": "terse"}})
    assert system_prompt(llm.requests()[-1]).startswith("Be terse.")
    response, _ = corpus.post("notes", {"threadId": new_id(), "runId": new_id(), "messages": [user("hi")],
                                        "forwardedProps": {"context": {"mood": "x"}}})
    assert response.status_code == 422 and "mood" in response.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------- shared state


def test_shared_state_ends_equal_on_client_and_graph(corpus, llm):
    llm.script({"text": "Green tea is nice."}, {"text": "Oolong too."})
    thread = new_id()
    result = run_agui_client(f"{corpus.url}/agents/notes", [
        {"op": "user", "content": "tell me about tea"},
        {"op": "user", "content": "more", "state": {"topic": "tea, again"}},
    ], thread_id=thread, state={"topic": "tea"})
    assert_clean(result)
    expected = {"topic": "tea, again", "notes": ["Green tea is nice.", "Oolong too."]}
    assert result["state"] == expected
    first, second = result["runs"]
    assert [e["type"] for e in first["wireEvents"]].count("STATE_DELTA") == 1  # take_note; not `answer`
    assert not any(e["type"] == "STATE_SNAPSHOT" for e in first["wireEvents"])  # the client was up to date
    assert "Topic: tea, again." in system_prompt(llm.requests()[-1])  # the client's edit reached the graph
    assert all("messages" not in str(e.get("delta", "")) for e in second["wireEvents"])
    # A client with a stale view (a fresh page on the same thread) gets the graph's state first.
    llm.script({"text": "Matcha."})
    stale = corpus.run("notes", [*result["messages"], user("and?")], thread, state={})
    assert stale[1]["type"] == "STATE_SNAPSHOT" and stale[1]["snapshot"] == expected


def test_a_state_edit_without_a_new_message_runs_the_graph_on_it(corpus, llm):
    llm.script({"text": "Green tea is nice."}, {"text": "Coffee is strong."})
    result = run_agui_client(f"{corpus.url}/agents/notes", [
        {"op": "user", "content": "tell me about tea"},
        {"op": "run", "state": {"topic": "coffee"}},  # the client edits the state and asks the agent to act on it
        {"op": "run"},  # nothing new: nothing to do
    ], state={"topic": "tea"})
    assert_clean(result)
    assert len(llm.requests()) == 2
    assert "Topic: coffee." in system_prompt(llm.requests()[-1])
    assert result["state"] == {"topic": "coffee", "notes": ["Green tea is nice.", "Coffee is strong."]}
    assert [m["content"] for m in result["messages"] if m["role"] == "assistant"] == [
        "Green tea is nice.", "Coffee is strong."]


def test_state_key_outside_the_input_schema_is_refused(corpus):
    body = {"threadId": new_id(), "runId": new_id(), "messages": [user("hi")], "state": {"topic": "x", "bogus": 1}}
    response, _ = corpus.post("notes", body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "state.bogus"
    response, _ = corpus.post("notes", {**body, "state": {"topic": ["not", "a", "string"]}})
    assert response.status_code == 422 and response.json()["error"]["field"] == "state.topic"


def test_graphs_without_shared_keys_send_no_state_events(corpus, llm):
    llm.script({"text": "Hello."})
    events = corpus.run("plain", [user("hi")], state={})
    assert not any(e["type"].startswith("STATE_") for e in events)


# ---------------------------------------------------------------------------------------------- multi-agent


def test_supervisor_team_streams_each_agent_by_name(corpus, llm):
    llm.script({"tool_calls": [tool_call("transfer_to_research_expert", {})]},
               {"tool_calls": [tool_call("get_weather", {"city": "Paris"})]},
               {"text": "Paris is sunny today, says the weather."},
               {"text": "The research expert found that Paris is sunny."},
               {"text": "Anything else?"})
    result = run_agui_client(f"{corpus.url}/agents/supervisor", [{"op": "user", "content": "weather in Paris?"},
                                                                   {"op": "user", "content": "no"}])
    assert_clean(result)
    wire = result["runs"][0]["wireEvents"]
    starts = {e["messageId"]: e.get("name") for e in wire if e["type"] == "TEXT_MESSAGE_START"}
    deltas = {}
    for e in wire:
        if e["type"] == "TEXT_MESSAGE_CONTENT":
            deltas.setdefault(e["messageId"], []).append(e["delta"])
    research = [m for m, name in starts.items() if name == "research_expert"]
    assert len(research) == 2  # its answer, and the hand-back message langgraph-supervisor adds under its name
    assert len(deltas[research[0]]) > 3  # token by token, not one block
    assert "".join(deltas[research[0]]) == "Paris is sunny today, says the weather."
    assert "supervisor" in starts.values()
    tools = [e["toolCallName"] for e in wire if e["type"] == "TOOL_CALL_START"]
    assert tools[:2] == ["transfer_to_research_expert", "get_weather"] and "transfer_back_to_supervisor" in tools
    results = [e["toolCallId"] for e in wire if e["type"] == "TOOL_CALL_RESULT"]
    assert len(results) == len(set(results)) == len(tools)  # each result once, though subgraph and parent write it
    assert result["messages"][-1]["content"] == "Anything else?"
    # Ids minted for the hand-off messages are the ones the thread keeps, and the expert's own tool call (kept by
    # the client, not by the supervisor's thread) did not fork it: the second turn only appended.
    thread = result["runs"][0]["input"]["threadId"]
    stored = [m["id"] for m in httpx.get(f"{corpus.url}/threads/{thread}/messages", timeout=10).json()["messages"]]
    assert [m["id"] for m in result["messages"] if m["id"] in stored] == stored
    assert stored[-2:] == [m["id"] for m in result["messages"][-2:]] and len(stored) == len(result["messages"]) - 2
    assert_tool_calls_answered_in_order(llm.requests()[-1])


def assert_tool_calls_answered_in_order(request: dict) -> None:
    """What OpenAI demands of a request: each assistant tool call answered by the tool messages right after it."""
    messages = request["body"]["messages"]
    for i, message in enumerate(messages):
        if message.get("tool_calls"):
            ids = [c["id"] for c in message["tool_calls"]]
            assert [m.get("tool_call_id") for m in messages[i + 1:i + 1 + len(ids)]] == ids, messages


def test_swarm_hands_off_and_the_next_turn_stays_with_the_new_agent(corpus, llm):
    llm.script({"tool_calls": [tool_call("transfer_to_bob", {})]}, {"text": "Arr, Bob here, matey!"},
               {"text": "Aye, still Bob."})
    result = run_agui_client(f"{corpus.url}/agents/swarm", [{"op": "user", "content": "talk to bob"},
                                                              {"op": "user", "content": "who is this?"}])
    assert_clean(result)
    first, second = result["runs"]
    assert [e["toolCallName"] for e in first["wireEvents"] if e["type"] == "TOOL_CALL_START"] == ["transfer_to_bob"]
    names = [e.get("name") for r in (first, second) for e in r["wireEvents"] if e["type"] == "TEXT_MESSAGE_START"]
    assert names == ["Bob", "Bob"]
    assert result["state"] == {"active_agent": "Bob"}  # the swarm's own state key, shared


# ---------------------------------------------------------------------------------------------- interrupts


def test_free_text_interrupt_resumes_with_the_answer(corpus, llm):
    llm.script({"text": "Paris it is: sunny."}, {"text": "Lyon: rainy."})
    result = run_agui_client(f"{corpus.url}/agents/ask_city", [
        {"op": "user", "content": "what is the weather?"},
        {"op": "resume", "decision": "approve", "payload": "Paris"},
        {"op": "user", "content": "and elsewhere?"},
        {"op": "resume", "decision": "approve", "payload": "Lyon"},
    ])
    assert_clean(result)
    asked = result["runs"][0]
    assert asked["outcome"] == "interrupt"
    assert [(i["reason"], i["message"]) for i in asked["pendingInterrupts"]] == [("input_required", "Which city?")]
    requests = llm.requests()
    assert requests[-2]["body"]["messages"][-1]["content"] == "The city is Paris."
    assert requests[-1]["body"]["messages"][-1]["content"] == "The city is Lyon."
    assert result["state"] == {"city": "Lyon"}
    assert [m.get("content") for m in result["messages"] if m["role"] == "assistant"] == [
        "Paris it is: sunny.", "Lyon: rainy."]


def test_a_state_edit_sent_with_a_resume_is_applied_as_the_run_resumes(corpus, llm):
    llm.script({"text": "Oslo: 50°F."})
    result = run_agui_client(f"{corpus.url}/agents/ask_city", [
        {"op": "user", "content": "what is the weather?"},
        {"op": "resume", "decision": "approve", "payload": "Oslo", "state": {"units": "imperial"}},
    ])
    assert_clean(result)
    assert llm.requests()[-1]["body"]["messages"][-1]["content"] == "The city is Oslo. Units: imperial."
    assert result["state"] == {"city": "Oslo", "units": "imperial"}


def test_deep_agent_sub_agent_streams_under_its_name(corpus, llm):
    llm.script({"tool_calls": [tool_call("task", {"description": "Find the weather in Rome.",
                                                  "subagent_type": "general-purpose"})]},
               {"text": "Rome is sunny, the sub-agent reports."},
               {"text": "Rome is sunny."}, {"text": "Any time."})
    result = run_agui_client(f"{corpus.url}/agents/deep", [{"op": "user", "content": "Rome?"},
                                                           {"op": "user", "content": "thanks"}])
    assert_clean(result)
    wire = result["runs"][0]["wireEvents"]
    starts = [(e.get("name"), e["messageId"]) for e in wire if e["type"] == "TEXT_MESSAGE_START"]
    deltas = [e for e in wire if e["type"] == "TEXT_MESSAGE_CONTENT" and e["messageId"] == starts[0][1]]
    assert starts[0][0] == "general-purpose" and len(deltas) > 3
    assert [e["toolCallName"] for e in wire if e["type"] == "TOOL_CALL_START"] == ["task"]
    # The sub-agent's reply stays out of the main agent's thread: the task call is still answered right after.
    second = llm.requests()[-1]
    assert "Rome is sunny, the sub-agent reports." not in [m.get("content") for m in second["body"]["messages"]
                                                           if m["role"] == "assistant"]
    assert_tool_calls_answered_in_order(second)
