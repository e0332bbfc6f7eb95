"""Every failure class gets its own readable answer: LLM errors as RUN_ERROR codes, bad requests as HTTP
errors naming the field or limit, auth as 401/403. And a client that leaves cancels its run."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.conftest import LoomServer, event_types, new_id, text_of, user


def run_body(messages=None, **extra) -> dict:
    return {"threadId": new_id(), "runId": new_id(), "messages": messages or [user("hi")], **extra}


def assert_run_error(events: list[dict], code: str) -> dict:
    assert event_types(events).count("RUN_ERROR") == 1 and events[-1]["type"] == "RUN_ERROR"
    assert "RUN_FINISHED" not in event_types(events)
    assert events[-1]["code"] == code and events[-1]["message"]
    return events[-1]


# ------------------------------------------------------------------------------------------- LLM errors


def test_rate_limit_is_retried_with_backoff_then_succeeds(loom_sqlite, llm):
    llm.script({"status": 429, "retry_after": 0}, {"text": "Made it."})
    events = loom_sqlite.run("agent", [user("hi")])
    assert text_of(events) == "Made it." and len(llm.requests()) == 2


@pytest.mark.parametrize("response, code, words", [
    ({"status": 429, "retry_after": 0, "repeat": True}, "LLM_RATE_LIMITED", "rate limiting"),
    ({"status": 401}, "LLM_AUTH", "LOOM_LLM_API_KEY"),
    ({"status": 500, "error_message": "model exploded", "repeat": True}, "LLM_BAD_RESPONSE", "model exploded"),
    ({"disconnect_after_tokens": 2, "text": "one two three four"}, "LLM_BAD_RESPONSE", "closed the stream"),
    ({"bad_json": True}, "LLM_BAD_RESPONSE", "cannot read"),
    ({"error_event_after_tokens": 1, "error_message": "peg-native format", "text": "a b c"}, "LLM_BAD_RESPONSE",
     "peg-native format"),
    ({"hang": True, "repeat": True}, "LLM_TIMEOUT", "LOOM_LLM_TIMEOUT"),
    ({"hang_after_tokens": 2, "text": "one two three"}, "LLM_TIMEOUT", "LOOM_LLM_TIMEOUT"),
])
def test_llm_failures_end_in_a_specific_run_error(loom_sqlite, llm, response, code, words):
    llm.script(response)
    error = assert_run_error(loom_sqlite.run("agent", [user("hi")]), code)
    assert words in error["message"]


def test_unreachable_llm(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL=f"http://127.0.0.1:{dead}/v1", LOOM_LLM_MAX_RETRIES="0").start()
    try:
        error = assert_run_error(server.run("agent", [user("hi")]), "LLM_UNREACHABLE")
        assert "LOOM_LLM_BASE_URL" in error["message"]
        assert "outcome=error:LLM_UNREACHABLE" in server.log()
    finally:
        server.stop()


# -------------------------------------------------------------------------------------- bad requests


@pytest.fixture(scope="module")
def strict(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("strict"), LOOM_LLM_BASE_URL=llm.url, LOOM_MAX_MESSAGES="3",
                        LOOM_MAX_TOOLS="1", LOOM_MAX_BODY_BYTES="20000").start()
    yield server
    server.stop()


@pytest.mark.parametrize("body, status, code, field", [
    (b"{not json", 422, "invalid_json", None),
    ({"runId": "r", "messages": []}, 422, "invalid_input", "threadId"),
    (run_body([{"id": "m", "role": "user"}]), 422, "invalid_input", "messages[0].content"),
    (run_body([{"id": "m", "role": "wizard", "content": "x"}]), 422, "invalid_input", "messages[0]"),
    (run_body([user(str(i)) for i in range(4)]), 422, "too_many_messages", "messages"),
    (run_body(tools=[{"name": f"t{i}", "description": "d", "parameters": {}} for i in range(2)]), 422,
     "too_many_tools", "tools"),
    (run_body([user("x" * 30000)]), 413, "body_too_large", None),
    (run_body([{"id": "t", "role": "tool", "toolCallId": "ghost", "content": "x"}]), 422, "invalid_messages",
     "messages[0].toolCallId"),
    (run_body(forwardedProps={"context": {"max_iterations": "lots"}}), 422, "invalid_context",
     "forwardedProps.context.max_iterations"),
    (run_body(forwardedProps={"context": {"user_id": "someone-else"}}), 422, "invalid_context",
     "forwardedProps.context.user_id"),
    (run_body(forwardedProps={"context": {"max_iterations": 0}}), 422, "invalid_context",
     "forwardedProps.context.max_iterations"),
])
def test_bad_requests_name_the_field_or_limit(strict, body, status, code, field):
    response, _ = strict.post("agent", body)
    assert response.status_code == status
    error = json.loads(response.read())["error"]
    assert error["code"] == code and error["message"]
    if field:
        assert error["field"] == field and field.split("[")[0].split(".")[0] in error["message"]


def test_unknown_agent_lists_the_available_ones(strict):
    response, _ = strict.post("nope", run_body())
    assert response.status_code == 404 and "agent" in response.read().decode()


def test_agents_and_health_describe_the_server(strict):
    agents = httpx.get(f"{strict.url}/agents").json()
    agent = next(a for a in agents if a["name"] == "agent")
    assert {"model", "system_prompt", "max_iterations", "tool_timeout"} <= set(agent["contextSchema"]["properties"])
    assert "user_id" not in agent["contextSchema"]["properties"]
    health = httpx.get(f"{strict.url}/health").json()
    assert health["status"] == "ok" and health["database"] == "sqlite" and health["model"]["demo"] is False


# ---------------------------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def secured(llm, tmp_path_factory):
    keys = "alice-key=user:alice bob-key=user:bob pipe-key=proxy"
    server = LoomServer(tmp_path_factory.mktemp("auth"), LOOM_LLM_BASE_URL=llm.url, LOOM_API_KEYS=keys).start()
    yield server
    server.stop()


@pytest.mark.parametrize("headers, props, status, code", [
    ({}, None, 401, "missing_api_key"),
    ({"authorization": "Bearer wrong"}, None, 401, "invalid_api_key"),
    ({"authorization": "Basic YWxpY2U6eA=="}, None, 401, "missing_api_key"),
    ({"authorization": "Bearer alice-key"}, {"user": {"id": "bob"}}, 403, "user_mismatch"),
    ({"authorization": "Bearer pipe-key"}, {}, 422, "missing_user"),
])
def test_auth_refusals(secured, headers, props, status, code):
    response, _ = secured.post("agent", run_body(forwardedProps=props), headers)
    assert response.status_code == status
    assert json.loads(response.read())["error"]["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_user_keys_and_proxy_keys_run_as_the_right_user(secured, llm):
    llm.script({"text": "a"}, {"text": "b"})
    secured.run("agent", [user("hi")], headers={"authorization": "Bearer alice-key"})
    secured.run("agent", [user("hi")], headers={"authorization": "Bearer pipe-key"},
                forwardedProps={"user": {"id": "carol", "name": "Carol"}})
    log = secured.log()
    assert "user=alice " in log and "user=carol " in log
    assert httpx.get(f"{secured.url}/agents").status_code == 401
    assert httpx.get(f"{secured.url}/agents", headers={"authorization": "Bearer bob-key"}).status_code == 200
    assert httpx.get(f"{secured.url}/health").status_code == 200


# ---------------------------------------------------------------------------------------- disconnect


def test_client_disconnect_cancels_the_run_and_its_llm_request(loom_sqlite, llm):
    llm.script({"text": "never finished", "ttft_ms": 0, "hang_after_tokens": 1})
    body = json.dumps(run_body()).encode()
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{loom_sqlite.url}/agents/agent", content=body,
                           headers={"content-type": "application/json"}) as response:
            for line in response.iter_lines():
                if "TEXT_MESSAGE_CONTENT" in line:
                    break  # the model is mid-answer: walk away
    left_at = time.time()
    # Closed by loom because the client left — not by the 3 s LOOM_LLM_TIMEOUT of this server.
    record = llm.wait_request(lambda r: r["outcome"] == "disconnected", timeout=2)
    assert record["ended_at"] - left_at < 2
    deadline = time.monotonic() + 5
    while "outcome=cancelled" not in loom_sqlite.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "outcome=cancelled" in loom_sqlite.log()


def test_concurrent_run_on_a_busy_thread_is_refused(loom_sqlite, llm):
    llm.script({"text": "slow answer", "ttft_ms": 1500})
    body = run_body()
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{loom_sqlite.url}/agents/agent", json=body) as first:
            lines = first.iter_lines()
            next(lines)  # RUN_STARTED: the run holds the thread
            second = client.post(f"{loom_sqlite.url}/agents/agent", json={**body, "runId": new_id()})
            assert second.status_code == 409 and second.json()["error"]["code"] == "thread_busy"
            assert "RUN_FINISHED" in "".join(lines)  # the first run was not disturbed



def test_open_server_refuses_non_loopback_clients():
    """Without LOOM_API_KEYS loom only serves this machine (checked on the request's peer address)."""
    from fastapi import HTTPException
    from starlette.requests import Request

    from loom.server.auth import authenticate
    from loom.server.settings import Settings

    def request_from(host: str) -> Request:
        return Request({"type": "http", "method": "POST", "path": "/", "headers": [], "client": (host, 5000)})

    settings = Settings(_env_file=None, api_keys="")
    assert authenticate(request_from("127.0.0.1"), settings).kind == "open"
    assert authenticate(request_from("::1"), settings).kind == "open"
    with pytest.raises(HTTPException) as refused:
        authenticate(request_from("192.0.2.7"), settings)
    assert refused.value.status_code == 403 and refused.value.detail["code"] == "loopback_only"
