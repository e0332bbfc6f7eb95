"""Multi-agent graphs, unit level: subgraph stream parts (`subgraphs=True`) -> AG-UI events named by agent, each
message once; and the client's copy of a sub-agent's messages not mistaken for an edit of the thread."""

from __future__ import annotations

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage

from loom.adapters.agui.inbound import reconcile
from loom.adapters.agui.outbound import RunTranslator
from tests.test_agui_outbound import run, task_end, task_start

EXPERT_NS = ("research_expert:t1",)


def expert_chunk(message_id: str, content: str, metadata: dict | None = None) -> dict:
    meta = {"langgraph_node": "agent", "langgraph_checkpoint_ns": "research_expert:t1|agent:t9", "tags": [],
            **(metadata or {})}
    return {"type": "messages", "ns": EXPERT_NS, "data": (AIMessageChunk(content=content, id=message_id), meta)}


def inner_task(name: str, messages, task="t9", end=True) -> dict:
    part = task_end(name, messages, task) if end else task_start(name, task)
    return {**part, "ns": EXPERT_NS}


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_a_sub_agents_tokens_stream_under_its_name_and_each_message_goes_out_once():
    call = {"id": "call_w", "name": "get_weather", "args": {"city": "Paris"}}
    asks = AIMessage("", id="a1", tool_calls=[call])
    result = ToolMessage("sunny", id="r1", tool_call_id="call_w")
    answer = AIMessage("Paris is sunny.", id="a2", name="research_expert")
    events = run([
        task_start("research_expert"),
        inner_task("agent", (), end=False),
        inner_task("agent", [asks]),  # not streamed: sent whole, when the inner step ends
        inner_task("tools", [result]),
        expert_chunk("a2", "Paris "), expert_chunk("a2", "is sunny."),
        inner_task("agent", [answer]),
        task_end("research_expert", [asks, result, answer]),  # the parent writes them all again
    ])
    assert kinds(events) == [
        "RUN_STARTED", "STEP_STARTED",  # one step: the top-level node, not the sub-agent's own nodes
        "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT",
        "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END",  # ended in time
        "STEP_FINISHED", "RUN_FINISHED"]
    start = next(e for e in events if e["type"] == "TEXT_MESSAGE_START")
    assert start["name"] == "research_expert" and start["messageId"] == "a2"


def test_an_agent_named_in_metadata_and_top_level_messages_unnamed():
    events = run([task_start("tools"), expert_chunk("s1", "sub", {"lc_agent_name": "general-purpose"}),
                  task_end("tools", [])])
    assert next(e for e in events if e["type"] == "TEXT_MESSAGE_START")["name"] == "general-purpose"
    top = {"type": "messages", "ns": (), "data": (AIMessageChunk(content="hi", id="m1"),
                                                  {"langgraph_checkpoint_ns": "chat:t1", "tags": []})}
    events = run([task_start("chat"), top, task_end("chat", [AIMessage("hi", id="m1")])])
    assert "name" not in next(e for e in events if e["type"] == "TEXT_MESSAGE_START")


def test_messages_the_thread_already_holds_are_not_sent_again():
    old = [HumanMessage("q", id="u1"), AIMessage("", id="a0", tool_calls=[{"id": "c0", "name": "t", "args": {}}]),
           ToolMessage("r", id="t0", tool_call_id="c0")]
    translator = RunTranslator("thread", "run")
    translator.known({"u1", "a0", "t0"})
    events = translator.feed(task_end("supervisor", [*old, AIMessage("new", id="a1")]))
    assert [(e["type"], e.get("messageId")) for e in events] == [
        ("TEXT_MESSAGE_START", "a1"), ("TEXT_MESSAGE_CONTENT", "a1"), ("TEXT_MESSAGE_END", "a1")]


def test_hand_off_messages_without_ids_get_the_ids_the_thread_keeps():
    back = AIMessage("Transferring back", tool_calls=[{"id": "c1", "name": "transfer_back", "args": {}}])
    done = ToolMessage("ok", tool_call_id="c1")
    events = RunTranslator("thread", "run").feed(task_end("expert", [back, done]))
    assert back.id and done.id  # minted on the very objects the reducer stores
    assert {e.get("messageId") for e in events if e["type"].startswith("TEXT")} == {back.id}
    assert [e["messageId"] for e in events if e["type"] == "TOOL_CALL_RESULT"] == [done.id]


def test_a_sub_agents_messages_held_by_the_client_are_not_an_edit():
    stored = [HumanMessage("q", id="u1"), AIMessage("", id="a1", tool_calls=[{"id": "c1", "name": "task",
                                                                               "args": {}}]),
              ToolMessage("done", id="t1", tool_call_id="c1"), AIMessage("answer", id="a2")]
    sub_agent = AIMessage("sub-agent reply", id="s1")
    sent = [*stored[:2], sub_agent, *stored[2:], HumanMessage("next", id="u2")]
    assert [m.id for m in reconcile(stored, sent)] == ["u2"]  # appended, no fork
    edited = [*stored[:2], sub_agent, stored[2], HumanMessage("edited", id="u9")]
    assert reconcile(stored, edited)[0].id == "__remove_all__"  # a real divergence still forks
