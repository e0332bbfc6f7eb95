"""Observability: /metrics summed over two workers after a known sequence of runs, JSON log lines, the key.

One `loom serve --workers 2` with JSON logs, hashed user ids and a metrics key. The runs: successes (until both
workers have served one), a tool error, an LLM error, a run the client leaves (cancelled) and a run refused
with 409 because that thread is busy. Every count read from /metrics must equal what was sent, whichever
worker answered the scrape.
"""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest

from tests.conftest import LoomServer, new_id, user
from tests.metrics_scrape import Samples, value
from tests.metrics_scrape import scrape as scrape_url

ALICE = {"authorization": "Bearer ka"}
PROXY = {"authorization": "Bearer kp"}
METRICS_KEY = {"authorization": "Bearer mk"}
RUN_FIELDS = {"graph", "thread", "run", "user", "duration_ms", "ttft_ms", "model_calls", "tool_calls", "tokens_in",
              "tokens_out", "outcome", "error_code"}


@pytest.fixture(scope="module")
def served(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("observe"), LOOM_LLM_BASE_URL=llm.url, LOOM_WORKERS="2",
                        LOOM_API_KEYS="ka=user:alice,kp=proxy", LOOM_METRICS_KEY="mk", LOOM_LOG_FORMAT="json",
                        LOOM_OPENPIPE_USER_ID="hashed", LOOM_LLM_MAX_RETRIES="0").start()
    yield server
    server.stop()


def scrape(server: LoomServer, headers: dict = METRICS_KEY) -> Samples:
    return scrape_url(server.url, headers)


def run_lines(server: LoomServer) -> list[dict]:
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    return [r["run"] for r in records if r.get("logger") == "loom.run" and "run" in r]


def wait_for_runs(server: LoomServer, count: int) -> list[dict]:
    deadline = time.monotonic() + 15
    while len(lines := run_lines(server)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(lines) == count, lines
    return lines


def test_metrics_after_known_runs_across_two_workers(served, llm):
    runs = 0
    pids: set[int] = set()
    while len(pids) < 2:  # successes until both workers have run one
        assert runs < 30, "the two workers never both served a run"
        llm.script({"text": "Hello there."})
        served.run("agent", [user("hi")], headers=ALICE)
        runs += 1
        lines = [json.loads(line) for line in served.log().splitlines() if '"logger": "loom.run"' in line]
        pids = {line["pid"] for line in lines}
    successes = runs

    call = {"id": "call_flaky", "name": "flaky_service", "arguments": {"query": "x"}}
    llm.script({"tool_calls": [call]}, {"text": "The service is down."})
    served.run("agent", [user("use the service")], headers=ALICE)
    successes += 1

    llm.script({"status": 400, "error_message": "bad request"})
    failed = served.run("agent", [user("fail")], headers=ALICE)
    assert failed[-1]["type"] == "RUN_ERROR" and failed[-1]["code"] == "LLM_BAD_RESPONSE"

    busy_thread = new_id()
    llm.script({"text": " ".join(f"w{i}" for i in range(400)), "token_delay_ms": 20})
    body = {"threadId": busy_thread, "runId": new_id(), "messages": [user("long answer")]}
    with httpx.Client(timeout=30) as client, client.stream("POST", f"{served.url}/agents/agent", json=body,
                                                           headers=ALICE) as stream:
        lines = stream.iter_lines()  # kept open (a `for … break` would close the response)
        while '"TEXT_MESSAGE_CONTENT"' not in next(lines):
            pass
        second = {"threadId": busy_thread, "runId": new_id(), "messages": [user("again")]}
        refused = httpx.post(f"{served.url}/agents/agent", json=second, headers=ALICE, timeout=10)
        assert refused.status_code == 409
    total = successes + 2
    lines = wait_for_runs(served, total)

    samples = scrape(served)
    runs_total = "loom_runs_total"
    assert value(samples, runs_total, graph="agent", outcome="success", code="") == successes
    assert value(samples, runs_total, graph="agent", outcome="error", code="LLM_BAD_RESPONSE") == 1
    assert value(samples, runs_total, graph="agent", outcome="cancelled", code="") == 1
    assert value(samples, "loom_runs_in_flight", graph="agent") == 0
    assert value(samples, "loom_run_duration_seconds_count", graph="agent") == total
    # Every run but the failed one streamed text; the failed one has no first token.
    assert value(samples, "loom_run_ttft_seconds_count", graph="agent") == total - 1
    assert value(samples, "loom_run_ttft_seconds_bucket", graph="agent", le="60.0") == total - 1
    assert value(samples, "loom_tool_calls_total", tool="flaky_service", status="error") == 1
    assert value(samples, "loom_llm_requests_total", model="scripted", outcome="success") == successes + 1
    assert value(samples, "loom_llm_requests_total", model="scripted", outcome="LLM_BAD_RESPONSE") == 1
    assert value(samples, "loom_llm_request_duration_seconds_count", model="scripted") >= successes + 2
    assert value(samples, "loom_llm_tokens_total", model="scripted", direction="out") > 0
    assert value(samples, "loom_run_refusals_total", reason="thread_busy") == 1
    assert value(samples, "loom_http_rejections_total", status="409") == 1
    assert not any("thread" in dict(labels) or "run" in dict(labels) or "user" in dict(labels)
                   for _, labels in samples), "an id as a label"

    by_outcome = {}
    for line in lines:
        assert set(line) == RUN_FIELDS
        assert line["graph"] == "agent" and line["user"] == hashlib.sha256(b"alice").hexdigest()[:16]
        by_outcome.setdefault((line["outcome"], line["error_code"]), []).append(line)
    assert len(by_outcome[("success", None)]) == successes
    [error] = by_outcome[("error", "LLM_BAD_RESPONSE")]
    assert error["ttft_ms"] is None and error["model_calls"] == 1
    [cancelled] = by_outcome[("cancelled", None)]
    assert cancelled["thread"] == busy_thread and cancelled["ttft_ms"] > 0
    [tool_run] = [line for line in by_outcome[("success", None)] if line["tool_calls"]]
    assert tool_run["model_calls"] == 2 and tool_run["tool_calls"] == 1 and tool_run["tokens_out"] > 0


def test_every_log_line_is_json(served):
    lines = [line for line in served.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "pid", "message"} <= set(record), record


def test_metrics_need_the_metrics_key(served):
    assert httpx.get(f"{served.url}/metrics", timeout=10).status_code == 401
    for other in (ALICE, PROXY, {"authorization": "Bearer nope"}):
        refused = httpx.get(f"{served.url}/metrics", headers=other, timeout=10)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert value(scrape(served), "loom_http_rejections_total", status="401") >= 4


@pytest.fixture(scope="module")
def single(llm, tmp_path_factory):
    """One process (prometheus-client's in-memory values), keys without a metrics key: a proxy key scrapes."""
    server = LoomServer(tmp_path_factory.mktemp("observe-single"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_API_KEYS="ka=user:alice,kp=proxy").start()
    yield server
    server.stop()


def test_without_a_metrics_key_a_proxy_key_reads_metrics_and_a_user_key_does_not(single):
    assert httpx.get(f"{single.url}/metrics", timeout=10).status_code == 401
    refused = httpx.get(f"{single.url}/metrics", headers=ALICE, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "metrics_forbidden"
    samples = scrape(single, PROXY)
    assert value(samples, "loom_http_rejections_total", status="403") == 1
    assert value(samples, "loom_http_rejections_total", status="401") == 1


def test_confirmations_and_rejected_tool_calls_are_counted(single, llm):
    before = scrape(single, PROXY)
    thread = new_id()
    calls = [{"id": f"call_{i}", "name": "delete_records", "arguments": {"table": t}}
             for i, t in enumerate(("a", "b"))]
    llm.script({"tool_calls": calls}, {"text": "Done."})
    first = single.run("agent", [user("delete a and b")], thread, headers=ALICE)
    interrupts = first[-1]["outcome"]["interrupts"]
    assert len(interrupts) == 2
    approve, reject = ({"status": "resolved", "payload": {"approved": verdict}} for verdict in (True, False))
    single.run("agent", [], thread, headers=ALICE,
               resume=[{"interruptId": interrupts[0]["id"], **approve}, {"interruptId": interrupts[1]["id"], **reject}])
    after = scrape(single, PROXY)
    for name, labels, expected in [
            ("loom_tool_confirmations_total", {"decision": "asked"}, 2),
            ("loom_tool_confirmations_total", {"decision": "approved"}, 1),
            ("loom_tool_confirmations_total", {"decision": "rejected"}, 1),
            ("loom_tool_calls_total", {"tool": "delete_records", "status": "success"}, 1),
            ("loom_tool_calls_total", {"tool": "delete_records", "status": "rejected"}, 1),
            ("loom_runs_total", {"graph": "agent", "outcome": "interrupt", "code": ""}, 1),
            ("loom_runs_total", {"graph": "agent", "outcome": "success", "code": ""}, 1)]:
        assert value(after, name, **labels) - value(before, name, **labels) == expected, (name, labels)


def test_metrics_off_answer_404(llm, tmp_path):
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL=llm.url, LOOM_METRICS_ENABLED="false").start()
    try:
        response = httpx.get(f"{server.url}/metrics", timeout=10)
        assert response.status_code == 404 and response.json()["error"]["code"] == "metrics_disabled"
    finally:
        server.stop()


def test_early_refusals_are_counted_by_status(single):
    before = scrape(single, PROXY)
    url = f"{single.url}/agents/agent"
    assert httpx.post(url, content=b"{", headers={**ALICE, "x-pad": "x" * 20_000}).status_code == 431
    assert httpx.post(url, content=b"x" * (4 * 1024 * 1024 + 1), headers=ALICE).status_code == 413
    assert httpx.post(url, content=b"{", headers=ALICE).status_code == 422
    assert httpx.post(f"{single.url}/agents/nope", json={}, headers=ALICE).status_code == 404
    after = scrape(single, PROXY)
    for status in ("431", "413", "422", "404"):
        assert value(after, "loom_http_rejections_total", status=status) - \
            value(before, "loom_http_rejections_total", status=status) == 1, status


def test_the_openai_clients_retries_are_counted(single, llm):
    before = scrape(single, PROXY)
    llm.script({"status": 503}, {"text": "Second time lucky."})
    events = single.run("agent", [user("hi")], headers=ALICE)
    assert events[-1]["type"] == "RUN_FINISHED"
    after = scrape(single, PROXY)
    assert value(after, "loom_llm_retries_total", source="client") - \
        value(before, "loom_llm_retries_total", source="client") == 1
