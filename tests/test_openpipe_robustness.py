"""OpenPipe never in the way: off, refusing, hanging or slow, a run's events are the same; the queue is bounded
and counted, and shutdown flushes it."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from tests.conftest import LoomServer, event_types, user
from tests.llm_server import free_port
from tests.metrics_scrape import scrape, value
from tests.openpipe_kit import OPK, fresh_openpipe_fixture, meta, openpipe_fixture, wait_for
from tests.openpipe_server import OpenPipeServer
from tests.test_agui_clients import tool_call

openpipe, _fresh_openpipe = openpipe_fixture, fresh_openpipe_fixture  # this module's stand-in


def scripted_run(server, llm, headers=None) -> list[str]:
    """One agent run with a tool call and an answer; its event types, ids aside."""
    llm.script({"tool_calls": [tool_call("calculator", {"expression": "1+1"})]}, {"text": "Two."})
    events = server.run("agent", [user("1+1?")], headers=headers)
    return event_types(events)


@pytest.fixture(scope="module")
def off(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("loom-off"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_OPENPIPE_API_KEY=OPK).start()
    yield server
    server.stop()


def test_nothing_is_reported_when_off(off, llm, openpipe):
    scripted_run(off, llm)
    assert httpx.get(f"{off.url}/openpipe/status").json() == {"enabled": False}
    assert openpipe.reports == []


def test_refused_connections_change_no_run(off, llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("loom-refused"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_OPENPIPE_ENABLED="true", LOOM_OPENPIPE_API_KEY=OPK,
                        LOOM_OPENPIPE_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1",
                        LOOM_OPENPIPE_MAX_RETRIES="1").start()
    try:
        expected = scripted_run(off, llm)
        for _ in range(3):
            assert scripted_run(server, llm) == expected
        status = wait_for(lambda: (s := httpx.get(f"{server.url}/openpipe/status").json())["failed"] >= 6 and s,
                          "every report failed")
        assert status["queued"] == 6 and status["sent"] == 0 and status["retried"] >= 1
        samples = scrape(server.url)
        assert value(samples, "loom_openpipe_reports_total", result="failed") == 6
        assert value(samples, "loom_openpipe_queue_depth") == 0
    finally:
        server.stop()
    assert "openpipe report failed" in server.log()


def test_a_hanging_openpipe_changes_no_run_and_overflow_is_counted(off, llm, tmp_path_factory):
    hanging = OpenPipeServer(OPK).start()
    hanging.set_mode("hang")
    server = LoomServer(tmp_path_factory.mktemp("loom-hang"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_OPENPIPE_ENABLED="true", LOOM_OPENPIPE_API_KEY=OPK, LOOM_OPENPIPE_BASE_URL=hanging.url,
                        LOOM_OPENPIPE_QUEUE_SIZE="3", LOOM_OPENPIPE_BATCH_SIZE="1", LOOM_OPENPIPE_TIMEOUT="30",
                        LOOM_OPENPIPE_FLUSH_SECONDS="0.5").start()
    try:
        expected = scripted_run(off, llm)
        for _ in range(4):  # 8 model calls: one in flight (hanging), three queued, four dropped
            assert scripted_run(server, llm) == expected
        status = httpx.get(f"{server.url}/openpipe/status").json()
        assert status["queued"] == 8 and status["in_flight"] == 1 and status["pending"] == 3
        assert status["dropped"] == 4 and status["sent"] == 0
        samples = scrape(server.url)
        assert value(samples, "loom_openpipe_queue_depth") == 3
        assert value(samples, "loom_openpipe_reports_total", result="dropped") == 4
        hanging.set_mode("ok")  # it recovers: the backlog goes out, the dropped stay dropped
        wait_for(lambda: httpx.get(f"{server.url}/openpipe/status").json()["sent"] == 4, "the backlog sent")
        assert len(hanging.reports) == 4
        assert value(scrape(server.url), "loom_openpipe_reports_total", result="sent") == 4
    finally:
        server.stop()
        hanging.stop()


def test_shutdown_flushes_the_queue(llm, openpipe, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("loom-flush"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_OPENPIPE_ENABLED="true", LOOM_OPENPIPE_API_KEY=OPK, LOOM_OPENPIPE_BASE_URL=openpipe.url,
                        LOOM_OPENPIPE_USER_ID="hashed").start()
    openpipe.set_mode("ok", delay_ms=300)  # reports still on their way when loom is told to stop
    try:
        scripted_run(server, llm)
    finally:
        server.stop()
    openpipe.set_mode("ok", delay_ms=0)
    assert len(openpipe.reports) == 2
    assert meta(openpipe.reports[0])["user_id"] == hashlib.sha256(b"local").hexdigest()[:16]




def test_settings_choose_what_is_reported():
    from types import SimpleNamespace

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from loom.adapters.openpipe.reporter import build_report

    def call(**extra) -> dict:
        return {"messages": [HumanMessage("q")], "metadata": {"langgraph_node": "call_model"}, "params": {
            "model": "m"}, "requested": 1.0, "received": 2.0, "inference_ms": 1.0, "base": {"graph": "agent"},
            "task": None, "message": AIMessage("a"), **extra}

    def settings(**flags):
        return SimpleNamespace(**{"openpipe_report_chat": True, "openpipe_report_tool_interactions": True,
                                  "openpipe_report_system_tasks": True, **flags})

    tool_turn = call(messages=[HumanMessage("q"), AIMessage("", tool_calls=[{"id": "c", "name": "t", "args": {}}]),
                               ToolMessage("r", tool_call_id="c")])
    assert build_report(call(), settings())["reqPayload"]["metadata"]["interaction_type"] == "chat_message"
    assert build_report(call(), settings(openpipe_report_chat=False)) is None
    assert build_report(tool_turn, settings(openpipe_report_chat=False)) is not None
    assert build_report(tool_turn, settings(openpipe_report_tool_interactions=False)) is None
    proposal = call(metadata={"moa_role": "proposer", "moa_layer": 2, "moa_index": 0})
    assert build_report(proposal, settings(openpipe_report_chat=False)) is None
    assert build_report(call(task="tags_generation"), settings(openpipe_report_chat=False)) is not None


def test_overflow_drops_the_oldest_and_counts():
    from types import SimpleNamespace

    from loom.adapters.openpipe.reporter import Reporter

    async def go():
        reporter = Reporter(SimpleNamespace(openpipe_queue_size=2, openpipe_api_key=OPK, openpipe_timeout=1,
                                            openpipe_base_url="http://127.0.0.1:9/api/v1"))
        for i in range(5):  # not started: nothing is sent
            reporter.put({"n": i})
        assert [r["n"] for r in reporter.queue] == [3, 4]
        status = reporter.status()
        assert (status["queued"], status["dropped"], status["pending"]) == (5, 3, 2)
        await reporter._client.aclose()
    asyncio.run(go())
