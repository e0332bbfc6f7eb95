"""The `moa` graph end to end: loom under uvicorn, proposer and aggregator models on the scripted LLM server.

Concurrency and deadlines are checked on the LLM server's own request records (start, first byte, end, outcome),
never against wall-clock thresholds.
"""

from __future__ import annotations

import asyncio

import httpx

from loom.graphs.moa import AGGREGATOR_PROMPT, Context, Proposer, _selected
from loom.server.persistence import open_persistence
from tests.agui_js import run_agui_client
from tests.conftest import assistant_messages, new_id, text_of, user
from tests.metrics_scrape import delta, scrape
from tests.test_agui_clients import assert_clean

ANSWER = "Synthesized: all of them agree."


def moa(*models: str, **settings) -> dict:
    """forwardedProps running `models` as proposers and the `agg` model as aggregator."""
    return {"context": {"proposers": [{"model": m} for m in models], "aggregator_model": "agg", **settings}}


def proposer_events(events: list[dict], status: str | None = None) -> list[dict]:
    values = [e["value"] for e in events if e["type"] == "CUSTOM" and e["name"] == "loom.moa.proposer"]
    return [v for v in values if status is None or v["status"] == status]


def custom(events: list[dict], name: str) -> list[dict]:
    return [e["value"] for e in events if e["type"] == "CUSTOM" and e["name"] == name]


def records(llm, *models: str) -> list[dict]:
    return [r for r in llm.requests() if r["model"] in models]


def system_prompt(record: dict) -> str:
    first = record["body"]["messages"][0]
    return first["content"] if first["role"] == "system" else ""


def numbered(*answers: str) -> str:
    return AGGREGATOR_PROMPT + "\n\n" + "\n\n".join(f"{i}. {a}" for i, a in enumerate(answers, 1))


def test_a_layer_runs_its_proposers_at_once_and_only_the_aggregator_streams(loom_sqlite, llm):
    for model in ("p1", "p2", "p3"):
        llm.set_model(model, latency_ms=200, text=f"{model} says hi")
    llm.set_model("agg", text=ANSWER)
    events = loom_sqlite.run("moa", [user("hello?")], forwardedProps=moa("p1", "p2", "p3"))

    proposals, [aggregator] = records(llm, "p1", "p2", "p3"), records(llm, "agg")
    assert len(proposals) == 3
    assert max(r["started_at"] for r in proposals) < min(r["ended_at"] for r in proposals), "not all in flight"
    assert aggregator["started_at"] >= max(r["ended_at"] for r in proposals)
    for record in proposals:  # the paper's sampling settings; a plain, tool-less request
        body = record["body"]
        assert body["temperature"] == 0.7 and 512 in (body.get("max_completion_tokens"), body.get("max_tokens"))
        assert "tools" not in body and body["messages"] == [{"role": "user", "content": "hello?"}]

    assert assistant_messages(events) == [ANSWER]  # proposer answers are not assistant messages
    assert sum(e["type"] == "TEXT_MESSAGE_CONTENT" for e in events) == len(ANSWER.split())  # token by token
    assert [(v["index"], v["model"]) for v in proposer_events(events, "started")] == [(0, "p1"), (1, "p2"), (2, "p3")]
    finished = sorted(proposer_events(events, "finished"), key=lambda v: v["index"])
    assert [v["answer"] for v in finished] == ["p1 says hi", "p2 says hi", "p3 says hi"]
    assert all(v["tokens"] == 3 and v["latency_ms"] >= 200 and v["attempts"] == 1 for v in finished)
    assert custom(events, "loom.moa.layer") == [{"layer": 1, "proposers": 3, "succeeded": 3, "failed": 0}]
    marks = [(e["type"], e.get("stepName")) for e in events]
    layer_steps = [m for m in marks if (m[1] or "").startswith("layer ")]
    assert layer_steps == [("STEP_STARTED", "layer 1"), ("STEP_FINISHED", "layer 1")]
    assert marks.index(("STEP_FINISHED", "layer 1")) < marks.index(("TEXT_MESSAGE_START", None))
    assert events[-1]["outcome"] == {"type": "success"}
    usage = {u["model"]: u["outputTokens"] for u in events[-1]["usage"]}  # hidden proposer calls counted too
    assert usage["agg"] == len(ANSWER.split()) and all(usage[m] == 3 for m in ("p1", "p2", "p3"))


def test_failing_flaky_and_hanging_proposers_do_not_stop_the_answer(loom_sqlite, llm):
    llm.set_model("good", text="good answer")
    llm.script({"status": 503}, model="flaky")  # one transient error, then its default answer
    llm.set_model("flaky", text="flaky answer")
    llm.set_model("refused", fail_status=400)  # not transient: no retry
    llm.set_model("broken", fail_status=500)  # transient every time: retried until the deadline
    llm.set_model("hang", hang=True)
    llm.set_model("agg", text=ANSWER)
    before = scrape(loom_sqlite.url)
    events = loom_sqlite.run("moa", [user("q")], forwardedProps=moa(
        "good", "flaky", "refused", "broken", "hang", proposer_deadline=1.0))
    after = scrape(loom_sqlite.url)

    assert text_of(events) == ANSWER and events[-1]["outcome"] == {"type": "success"}
    done = {v["model"]: v for v in proposer_events(events) if v["status"] != "started"}
    assert (done["good"]["status"], done["flaky"]["status"], done["flaky"]["attempts"]) == ("finished", "finished", 2)
    assert (done["refused"]["code"], done["refused"]["attempts"]) == ("LLM_BAD_RESPONSE", 1)
    assert "400" in done["refused"]["reason"]
    assert done["broken"]["code"] == "LLM_BAD_RESPONSE" and done["broken"]["attempts"] > 1
    assert done["hang"]["code"] == "DEADLINE" and "1 s deadline" in done["hang"]["reason"]

    [hung], [aggregator] = records(llm, "hang"), records(llm, "agg")
    assert hung["outcome"] == "disconnected"  # cancelled at the deadline: its HTTP request was closed
    assert hung["ended_at"] <= aggregator["started_at"]
    first_start = min(r["started_at"] for r in records(llm, "good", "flaky", "refused", "broken", "hang"))
    assert all(r["started_at"] < first_start + 1.0 for r in records(llm, "broken")), "retried past the deadline"
    assert system_prompt(aggregator) == numbered("good answer", "flaky answer")  # exactly the good answers
    assert custom(events, "loom.moa.layer") == [{"layer": 1, "proposers": 5, "succeeded": 2, "failed": 3}]
    assert custom(events, "loom.moa.fallback") == []
    failures = "loom_moa_proposer_failures_total"
    assert delta(before, after, failures, reason="LLM_BAD_RESPONSE") == 2
    assert delta(before, after, failures, reason="DEADLINE") == 1
    assert delta(before, after, "loom_llm_retries_total", source="moa") >= 1 + done["broken"]["attempts"] - 1
    assert delta(before, after, "loom_llm_requests_total", model="flaky", outcome="LLM_BAD_RESPONSE") == 1


def test_all_proposers_failing_falls_back_to_a_direct_answer(loom_sqlite, llm):
    llm.set_model("refused", fail_status=400)
    llm.set_model("denied", fail_status=403)
    llm.set_model("agg", text=ANSWER)
    before = scrape(loom_sqlite.url)
    events = loom_sqlite.run("moa", [user("q")], forwardedProps=moa("refused", "denied"))
    after = scrape(loom_sqlite.url)
    assert delta(before, after, "loom_moa_fallbacks_total", mode="direct") == 1
    assert delta(before, after, "loom_moa_proposer_failures_total", reason="LLM_AUTH") == 1

    [fallback] = custom(events, "loom.moa.fallback")
    assert (fallback["mode"], fallback["succeeded"], fallback["required"]) == ("direct", 0, 1)
    assert "answers by itself" in fallback["reason"]
    [aggregator] = records(llm, "agg")
    assert aggregator["body"]["messages"] == [{"role": "user", "content": "q"}]  # no synthesis prompt
    assert assistant_messages(events) == [ANSWER] and events[-1]["outcome"] == {"type": "success"}


def test_two_layers_feed_answers_forward_through_the_synthesis_prompt(loom_sqlite, llm):
    llm.script({"text": "L1 from p1"}, {"text": "L2 from p1"}, model="p1")
    llm.script({"text": "L1 from p2", "ttft_ms": 100}, {"text": "L2 from p2"}, model="p2")
    llm.set_model("agg", text=ANSWER)
    history = [{"id": new_id(), "role": "system", "content": "Be brief."}, user("What is MoA?")]
    events = loom_sqlite.run("moa", history, forwardedProps=moa("p1", "p2", layers=2),
                             context=[{"description": "Page", "value": "docs"}])

    first, second = records(llm, "p1", "p2")[:2], records(llm, "p1", "p2")[2:]
    prefix = "Be brief.\n\nContext provided by the application:\n- Page: docs"
    assert [system_prompt(r) for r in first] == [prefix] * 2  # the first layer sees the conversation only
    assert min(r["started_at"] for r in second) >= max(r["ended_at"] for r in first)
    for record in second:  # the paper: appended after a blank line to the existing system message
        assert system_prompt(record) == prefix + "\n\n" + numbered("L1 from p1", "L1 from p2")
        assert record["body"]["messages"][1:] == [{"role": "user", "content": "What is MoA?"}]
    [aggregator] = records(llm, "agg")
    assert system_prompt(aggregator) == prefix + "\n\n" + numbered("L2 from p1", "L2 from p2")
    assert [v["layer"] for v in custom(events, "loom.moa.layer")] == [1, 2]
    steps = [e["stepName"] for e in events if e["type"] == "STEP_STARTED" and e["stepName"].startswith("layer ")]
    assert steps == ["layer 1", "layer 2"] and text_of(events) == ANSWER


def test_a_layer_short_of_its_minimum_ends_the_layers(loom_sqlite, llm):
    llm.set_model("good", text="good answer")
    llm.set_model("refused", fail_status=400)
    llm.set_model("agg", text=ANSWER)
    events = loom_sqlite.run("moa", [user("q")], forwardedProps=moa("good", "refused", layers=2, min_proposers=2))
    assert len(records(llm, "good", "refused")) == 2  # no second layer
    assert [(f["mode"], f["layer"], f["succeeded"], f["required"]) for f in custom(events, "loom.moa.fallback")] == [
        ("partial", 1, 1, 2)]
    assert system_prompt(records(llm, "agg")[0]) == numbered("good answer")

    # Layer 2 fails entirely: the aggregator works from layer 1.
    llm.reset()
    llm.script({"text": "L1 answer"}, {"status": 400}, model="p1")
    llm.set_model("agg", text=ANSWER)
    events = loom_sqlite.run("moa", [user("q")], forwardedProps=moa("p1", layers=2))
    [fallback] = custom(events, "loom.moa.fallback")
    assert (fallback["mode"], fallback["layer"], fallback["from_layer"]) == ("earlier_layer", 2, 1)
    assert system_prompt(records(llm, "agg")[0]) == numbered("L1 answer")
    assert text_of(events) == ANSWER


def test_aggregator_failure_is_a_run_error(loom_sqlite, llm):
    llm.set_model("p1", text="fine")
    llm.set_model("agg", fail_status=401)
    events = loom_sqlite.run("moa", [user("q")], forwardedProps=moa("p1"))
    assert events[-1]["type"] == "RUN_ERROR" and events[-1]["code"] == "LLM_AUTH"
    assert [e["type"] for e in events].count("RUN_FINISHED") == 0


def test_multi_turn_context_and_a_thread_holding_only_the_answers(loom, llm):
    llm.set_model("p1", text="p1 idea")
    llm.set_model("p2", text="p2 idea")
    llm.script({"text": "First answer."}, {"text": "Second answer."}, model="agg")
    thread, u1, u2 = new_id(), user("I am Ada."), user("Who am I?")
    first = loom.run("moa", [u1], thread, forwardedProps=moa("p1", "p2"))
    answer_id = next(e["messageId"] for e in first if e["type"] == "TEXT_MESSAGE_START")
    a1 = {"id": answer_id, "role": "assistant", "content": "First answer."}
    llm.reset()
    llm.set_model("p1", text="p1 idea")
    llm.set_model("p2", text="p2 idea")
    llm.set_model("agg", text="Second answer.")
    second = loom.run("moa", [u1, a1, u2], thread, forwardedProps=moa("p1", "p2"))
    assert text_of(second) == "Second answer."

    turn = [{"role": "user", "content": "I am Ada."}, {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": "Who am I?"}]
    for record in records(llm, "p1", "p2"):
        assert record["body"]["messages"] == turn  # earlier turns, once, and no proposer text
    assert records(llm, "agg")[0]["body"]["messages"][1:] == turn

    values = asyncio.run(_thread_values(loom.env["LOOM_DATABASE_URL"], thread))
    assert [(m.type, m.content) for m in values["messages"]] == [
        ("human", "I am Ada."), ("ai", "First answer."), ("human", "Who am I?"), ("ai", "Second answer.")]
    assert [(p["layer"], p["model"], p["status"]) for p in sorted(values["proposals"], key=lambda p: p["index"])] == [
        (1, "p1", "finished"), (1, "p2", "finished")]  # this turn's only


async def _thread_values(database_url: str, thread: str) -> dict:
    async with open_persistence(database_url) as (saver, _store):
        stored = await saver.aget_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}})
    return stored.checkpoint["channel_values"]


def test_official_client_and_validator_accept_moa_runs(loom, llm):
    llm.set_model("p1", text="proposal one")
    llm.set_model("p2", text="proposal two", fail_status=500)
    llm.script({"text": "Hello!"}, {"text": "Again."}, model="agg")
    result = run_agui_client(f"{loom.url}/agents/moa", [{"op": "user", "content": "hi"},
                                                        {"op": "user", "content": "and again"}],
                             forwarded_props=moa("p1", "p2", proposer_deadline=0.5))
    assert_clean(result)
    assert [(m["role"], m.get("content")) for m in result["messages"]] == [
        ("user", "hi"), ("assistant", "Hello!"), ("user", "and again"), ("assistant", "Again.")]
    delivered = result["runs"][0]["events"]  # what the client accepted: the proposer answer, off the history
    assert [v["answer"] for v in proposer_events(delivered, "finished")] == ["proposal one"]
    assert [v["model"] for v in proposer_events(delivered, "failed")] == ["p2"]


def test_runtime_context_schema_sampling_and_studio_style_dicts(loom_sqlite):
    [entry] = [g for g in httpx.get(f"{loom_sqlite.url}/agents").json() if g["name"] == "moa"]
    properties = entry["contextSchema"]["properties"]
    assert {"proposers", "aggregator_model", "layers", "agents_per_layer", "sample_seed", "proposer_deadline",
            "proposer_max_tokens", "min_proposers", "aggregator_prompt"} <= set(properties)
    assert properties["layers"]["default"] == 1 and properties["min_proposers"]["default"] == 1

    # LangGraph Studio passes the context as Context(**dict): nested entries become Proposers all the same.
    ctx = Context(proposers=[{"model": m} for m in "abcde"], agents_per_layer=2, sample_seed=7)
    assert ctx.proposers[0] == Proposer(model="a", temperature=0.7)
    picks = [_selected(ctx, layer) for layer in (1, 2, 3)]
    assert picks == [_selected(ctx, layer) for layer in (1, 2, 3)]  # seeded: the same every turn
    assert all(len(p) == 2 for p in picks) and len({tuple(p) for p in picks}) > 1  # but differing per layer
    assert _selected(Context(), 1) == [0, 1, 2]  # default: all proposers (Self-MoA, three samples)
