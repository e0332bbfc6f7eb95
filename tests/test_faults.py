"""Broken upstreams: every way the model server can fail ends in its own RUN_ERROR code, nothing partial is
stored as an answer, and the thread works on the next run. Plus the bounds that hold whatever the model does."""

from __future__ import annotations

import time

import pytest

from tests.conftest import LoomServer, new_id, text_of, user
from tests.test_failures import assert_run_error


@pytest.fixture(scope="module")
def bounded(llm, tmp_path_factory):
    """A 1 s content-silence timeout, and run limits small enough to reach in a test."""
    server = LoomServer(tmp_path_factory.mktemp("faults"), LOOM_LLM_BASE_URL=llm.url, LOOM_LLM_TIMEOUT="1",
                        LOOM_LLM_MAX_RETRIES="0", LOOM_RUN_TIMEOUT="20", LOOM_RUN_MAX_OUTPUT_TOKENS="400").start()
    yield server
    server.stop()


@pytest.mark.parametrize("response, code", [
    ({"fault": "html"}, "LLM_BAD_RESPONSE"),
    ({"fault": "non_stream"}, "LLM_BAD_RESPONSE"),
    ({"fault": "empty"}, "LLM_BAD_RESPONSE"),
    ({"fault": "wrong_shape"}, "LLM_BAD_RESPONSE"),
    ({"fault": "keepalive_only"}, "LLM_BAD_RESPONSE"),
    ({"fault": "close_without_end"}, "LLM_BAD_RESPONSE"),
    ({"fault": "reset_before_headers"}, "LLM_UNREACHABLE"),
    ({"fault": "keepalive_forever"}, "LLM_TIMEOUT"),  # keep-alives are not content: they do not reset the timeout
    ({"hang": True}, "LLM_TIMEOUT"),
    ({"hang_after_tokens": 2, "text": "one two three"}, "LLM_TIMEOUT"),
    ({"fault": "endless"}, "RUN_TOKEN_LIMIT"),
    ({"status": 500, "error_message": "upstream exploded"}, "LLM_BAD_RESPONSE"),
    ({"status": 503}, "LLM_BAD_RESPONSE"),
    ({"status": 401}, "LLM_AUTH"),
    ({"status": 403}, "LLM_AUTH"),
    ({"status": 429, "retry_after": 0}, "LLM_RATE_LIMITED"),
    ({"status": 404}, "LLM_BAD_RESPONSE"),
])
def test_each_upstream_fault_has_its_code_and_the_thread_stays_usable(bounded, llm, response, code):
    thread = new_id()
    llm.script(response)
    started = time.monotonic()
    error = assert_run_error(bounded.run("agent", [user("hi", "u1")], thread_id=thread), code)
    assert time.monotonic() - started < 15, "a fault must end the run well within its limits"
    assert "Traceback" not in error["message"] and error["message"]
    # Nothing of the failed answer is in the thread: the next run sees only the user's turn, and answers.
    llm.script({"text": "Recovered."})
    events = bounded.run("agent", [user("hi", "u1"), user("again", "u2")], thread_id=thread)
    assert text_of(events) == "Recovered." and events[-1]["type"] == "RUN_FINISHED"
    sent = llm.requests()[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "user"], sent


def test_a_stream_cut_without_its_end_marker_stores_nothing(bounded, llm):
    thread = new_id()
    llm.script({"fault": "close_without_end"})
    events = bounded.run("agent", [user("hi", "c1")], thread_id=thread)
    assert_run_error(events, "LLM_BAD_RESPONSE")
    llm.script({"text": "Whole answer."})
    bounded.run("agent", [user("hi", "c1"), user("and?", "c2")], thread_id=thread)
    sent = llm.requests()[-1]["body"]["messages"]
    assert not any("partial" in str(m.get("content")) for m in sent), sent


def test_run_wall_clock_limit_from_the_context(bounded, llm):
    llm.script({"fault": "endless", "interval_ms": 50})
    started = time.time()
    error = assert_run_error(bounded.run("agent", [user("hi")], forwardedProps={"context": {"run_timeout": 1.5}}),
                             "RUN_TIME_LIMIT")
    assert 1.4 < time.time() - started < 6 and "LOOM_RUN_TIMEOUT" in error["message"]
    # The endless upstream request was cancelled with the run.
    record = llm.wait_request(lambda r: r["outcome"] == "disconnected", timeout=2)
    assert record["ended_at"] - started < 4


def test_the_context_cannot_raise_the_servers_limits(bounded, llm):
    llm.script({"fault": "endless"})
    events = bounded.run("agent", [user("hi")], forwardedProps={"context": {"max_output_tokens": 10_000_000}})
    assert_run_error(events, "RUN_TOKEN_LIMIT")
    assert sum(1 for e in events if e["type"] == "TEXT_MESSAGE_CONTENT") <= 400


def test_max_iterations_holds_when_the_model_keeps_calling_tools(bounded, llm):
    llm.script({"tool_calls": [{"name": "calculator", "arguments": {"expression": "1+2"}}], "repeat": True})
    events = bounded.run("agent", [user("loop forever")], forwardedProps={"context": {"max_iterations": 2}})
    assert events[-1]["type"] == "RUN_FINISHED"
    # Two calls with tools, one without (the budget is used up), whose tool call is refused, not run.
    assert len(llm.requests()) == 3
    assert "tools" not in llm.requests()[-1]["body"]
    results = [e["content"] for e in events if e["type"] == "TOOL_CALL_RESULT"]
    assert len(results) == 3 and "budget" in results[-1] and "3" in results[0]


def test_nan_tool_timeout_says_it_must_be_a_number(bounded):
    response, _ = bounded.post("agent", {"threadId": new_id(), "runId": new_id(), "messages": [user("hi")],
                                         "forwardedProps": {"context": {"tool_timeout": "NaN"}}})
    error = response.json()["error"]
    assert response.status_code == 422 and error["field"] == "forwardedProps.context.tool_timeout"
    assert "finite number" in error["message"], error


def test_credentials_in_the_llm_url_are_refused_at_start_up(tmp_path):
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL="http://llmuser:TOPSECRETPW@127.0.0.1:9/v1")
    with pytest.raises(RuntimeError) as failed:
        server.start()
    message = str(failed.value)
    assert "LOOM_LLM_BASE_URL" in message and "LOOM_LLM_API_KEY" in message
    assert "TOPSECRETPW" not in message and "Traceback" not in message
