"""Hostile requests: each is refused before any work with a 4xx in loom's error shape naming the field or the
limit, never a 500; what anonymous callers can see and make loom do is bounded."""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import pytest

from tests.conftest import LoomServer, new_id, user
from tests.metrics_scrape import delta, scrape


def body(messages=None, **extra) -> dict:
    return {"threadId": new_id(), "runId": new_id(), "messages": messages or [user("hi")], **extra}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def assistant_call(arguments: str) -> list[dict]:
    call = {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": arguments}}
    return [user("hi", "u1"), {"id": "a1", "role": "assistant", "toolCalls": [call]}]


def document(value: str) -> list[dict]:
    part = {"type": "document", "source": {"type": "data", "value": value, "mimeType": "text/plain"}}
    return [{"id": "u1", "role": "user", "content": [part]}]


@pytest.mark.parametrize("payload, code, field", [
    (body(threadId="a\u0000b"), "invalid_text", "threadId"),
    (body(threadId="t" * 3000), "invalid_id", "threadId"),
    (body(runId=""), "invalid_id", "runId"),
    (body(threadId="tab\there"), "invalid_id", "threadId"),
    (body([user("hi", "m\u0000")]), "invalid_text", "messages[0].id"),
    (body([user("hi", "m" * 300)]), "invalid_id", "messages[0].id"),
    (body([user("a lone \ud800 surrogate")]), "invalid_text", "messages[0].content"),
    (body([user("a\u0000b")]), "invalid_text", "messages[0].content"),
    (body(assistant_call("[1,2]")), "invalid_messages", "messages[1].toolCalls[0].function.arguments"),
    (body(assistant_call('"x"')), "invalid_messages", "messages[1].toolCalls[0].function.arguments"),
    (body(assistant_call("{nope")), "invalid_messages", "messages[1].toolCalls[0].function.arguments"),
    (body(document("%%%not base64%%%")), "invalid_messages", "messages[0].content[0].source.value"),
    (body(state={"k": "\udfff"}), "invalid_text", "state.k"),
    (body(forwardedProps={"context": {"\u0000": 1}}), "invalid_text", "forwardedProps.context.\\u0000"),
    (body(state={"\ud800": 1}), "invalid_text", "state.\\ud800"),
])
def test_hostile_run_inputs_are_refused_naming_the_field(loom_sqlite, llm, payload, code, field):
    # json.dumps escapes NUL and lone surrogates as \\u0000 / \\ud800: exactly what a hostile client sends.
    response, _ = loom_sqlite.post("agent", json.dumps(payload).encode())
    assert response.status_code == 422, response.read()
    error = json.loads(response.read())["error"]
    assert (error["code"], error["field"]) == (code, field) and error["message"]
    assert llm.requests() == []  # refused before any work


@pytest.mark.parametrize("where", ["state", "forwardedProps"])
def test_bodies_nested_ten_thousand_deep_are_refused(loom_sqlite, where):
    raw = b'{"threadId": "t", "runId": "r", "messages": [], "' + where.encode() + b'": ' + deep(10_000).encode() + b"}"
    response, _ = loom_sqlite.post("agent", raw)
    error = json.loads(response.read())["error"]
    assert response.status_code == 422 and error["code"] == "too_deep"
    moderately = json.dumps(body(**{where: json.loads(deep(100))})).encode()
    response, _ = loom_sqlite.post("agent", moderately)
    assert response.status_code == 422 and json.loads(response.read())["error"]["code"] == "too_deep"


def test_a_valid_document_part_still_reaches_the_model(loom_sqlite, llm):
    llm.script({"text": "Read it."})
    events = loom_sqlite.run("agent", document(base64.b64encode(b"the note").decode()))
    assert events[-1]["type"] == "RUN_FINISHED"
    assert "the note" in json.dumps(llm.requests()[-1]["body"]["messages"])


@pytest.mark.parametrize("method, path, payload", [
    ("POST", "/memories", {"content": "a\u0000b"}),
    ("POST", "/memories", {"content": "\ud800x"}),
    ("POST", "/memories", {"content": "fine", "tags": ["t\u0000"]}),
    ("POST", "/memories", {"content": "fine", "tags": ["\udc00"]}),
    ("GET", "/memories/search?q=a%00b", None),
])
def test_memories_refuse_text_that_is_not_text(loom_sqlite, method, path, payload):
    content = json.dumps(payload).encode() if payload is not None else None
    response = httpx.request(method, loom_sqlite.url + path, content=content,
                             headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"


def test_memory_ids_that_cannot_exist_are_not_found(loom_sqlite):
    created = httpx.post(f"{loom_sqlite.url}/memories", json={"content": "likes tea"}).json()
    for path in ("/memories/a%00b", "/memories/" + "x" * 3000):
        assert httpx.get(loom_sqlite.url + path).status_code == 404
    patched = httpx.patch(f"{loom_sqlite.url}/memories/{created['id']}", content=b'{"content": "a\\u0000b"}',
                          headers={"content-type": "application/json"})
    assert patched.status_code == 422 and patched.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("method, path, raw", [
    ("POST", "/memories", b"{not json"),
    ("PATCH", "/memories/x", b"{not json"),
    ("POST", "/memories", b'{"content": ' + deep(10_000).encode() + b"}"),
    ("POST", "/threads/t/dataset", b"{not json"),
])
def test_rest_routes_answer_bad_json_in_looms_shape(loom_sqlite, method, path, raw):
    response = httpx.request(method, loom_sqlite.url + path, content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]["code"]


def test_unknown_routes_and_methods_answer_in_looms_shape(loom_sqlite):
    for response in (httpx.get(f"{loom_sqlite.url}/nope"), httpx.put(f"{loom_sqlite.url}/health")):
        assert response.status_code in (404, 405) and response.json()["error"]["code"] == "http_error"


def test_openapi_lists_the_error_responses(loom_sqlite):
    paths = httpx.get(f"{loom_sqlite.url}/openapi.json").json()["paths"]
    for route in ("/agents/{name}", "/memories", "/memories/{memory_id}"):
        for operation in paths[route].values():
            assert {"400", "404", "422"} <= set(operation["responses"]), (route, operation["responses"])


# ------------------------------------------------------------------------------------ keys, sizes, disclosure


@pytest.fixture(scope="module")
def guarded(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("guarded"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_API_KEYS="alice-key=user:alice", LOOM_MAX_BODY_BYTES="100000", LOOM_METRICS_KEY="mk",
                        LOOM_PUBLIC_URL="https://loom.example.org/").start()
    yield server
    server.stop()


@pytest.mark.parametrize("method, path", [("POST", "/memories"), ("POST", "/agents/agent"),
                                          ("POST", "/threads/t/dataset"), ("PATCH", "/memories/x")])
def test_anonymous_large_bodies_are_refused_before_they_are_read(guarded, method, path):
    # 50 MB announced, 64 KB sent: the 401 comes without waiting for (or buffering) the rest.
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     "content-length: 50000000\r\n\r\n".encode() + b"{" + b" " * 65536)
        answer = b""
        while b"}}" not in answer and (chunk := sock.recv(65536)):  # the head and the JSON error, however split
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401") and b"missing_api_key" in answer, answer


@pytest.mark.parametrize("path", ["/memories", "/agents/agent"])
def test_every_route_bounds_its_body(guarded, path):
    response = httpx.post(guarded.url + path, content=b"[" + b" " * 200_000 + b"]",
                          headers={"authorization": "Bearer alice-key", "content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_oversized_headers_are_refused(guarded):
    response = httpx.get(f"{guarded.url}/agents", headers={"authorization": "Bearer " + "k" * 100_000})
    assert response.status_code == 431 and response.json()["error"]["code"] == "headers_too_large"


def test_an_endless_header_is_refused_while_it_arrives(guarded):
    # One header that never ends: the server must answer before the client stops sending, not buffer it all.
    host, port = guarded.url.removeprefix("http://").split(":")
    before = scrape(guarded.url, {"authorization": "Bearer mk"})
    sent, answer = 0, b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /agents HTTP/1.1\r\nhost: loom\r\nx-endless: ")
        sock.setblocking(False)
        while sent < 8 * 1024 * 1024 and not answer:
            try:
                sock.send(b"a" * 4096)
                sent += 4096
            except (BlockingIOError, ConnectionError):  # the server stopped reading: it has answered or closed
                time.sleep(0.01)
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                pass
        sock.setblocking(True)
        while b"\r\n\r\n" in answer and not answer.endswith(b"}"):
            answer += sock.recv(65536) or b"}"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    # Refused after ~32 KiB read; what was sent also sits in the two sockets' buffers (a few hundred KiB).
    assert sent < 2 * 1024 * 1024, sent
    assert delta(before, scrape(guarded.url, {"authorization": "Bearer mk"}), "loom_http_rejections_total",
                 status="431") == 1


def test_health_shows_anonymous_callers_no_llm_url(guarded, llm):
    anonymous = httpx.get(f"{guarded.url}/health")
    assert anonymous.status_code == 200 and "127.0.0.1" not in anonymous.text and "base_url" not in anonymous.text
    keyed = httpx.get(f"{guarded.url}/health", headers={"authorization": "Bearer alice-key"}).json()
    assert keyed["model"]["base_url"] == llm.url


def test_credentials_in_a_url_never_reach_health():
    from loom.server.app import _without_credentials

    assert _without_credentials("http://user:TOPSECRET@llm.internal:8000/v1") == "http://llm.internal:8000/v1"


@pytest.mark.parametrize("path", ["/openwebui/pipe.py", "/openwebui/action.py"])
def test_served_files_hold_the_public_url_not_the_host_header(guarded, path):
    response = httpx.get(guarded.url + path, headers={"host": "evil.example:9999"})
    assert response.status_code == 200
    assert "evil.example" not in response.text and "https://loom.example.org" in response.text
