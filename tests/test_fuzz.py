"""Property-based fuzz of loom's HTTP surface with hostile JSON: RunAgentInput-shaped bodies for
`POST /agents/{graph}`, Chat Completions bodies for `/v1/chat/completions`, and the `/memories*`, `/threads/*`
and `/tasks/*` routes, with NUL, lone surrogates, huge and deeply
nested values, wrong types and missing fields.

Properties: never a 500; every refusal is loom's `{"error": {code, message}}`; an accepted run ends in
RUN_FINISHED or a specific RUN_ERROR (never INTERNAL_ERROR); the server stays healthy. Bounded by example counts.
A 5xx is allowed only as a named upstream dependency failure (OpenPipe is configured but unreachable here).
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import POSTGRES_URL, LoomServer, free_port

UPSTREAM_CODES = {"openpipe_unavailable", "openpipe_auth"}
# The suite replays the same 250 cases per test; LOOM_FUZZ_EXAMPLES=N explores N fresh random ones instead.
EXAMPLES = os.environ.get("LOOM_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(EXAMPLES or 250), deadline=None, database=None, derandomize=EXAMPLES is None,
                suppress_health_check=list(HealthCheck))
stats = {"cases": 0, "5xx": 0}

hostile = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "\ud800x", "x\udfff", "\ufeff", "🙂", "%00", "../x",
                     "' OR 1=1 --", "<script>", "\n\r\t", "x" * 5000, "k" * 300, "\u202e", "null"]),
    st.text(alphabet=st.characters(categories=["Cs", "Cc", "Zs", "Lo"]), max_size=10),
)
ids = st.one_of(st.uuids().map(str), hostile)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile, inner, max_size=3),
                      max_leaves=8)
nested = st.integers(1, 200).map(lambda n: json.loads("[" * n + "]" * n))
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "document", "binary", "x"])},
                                       optional={"text": hostile, "source": values}), max_size=2)
tool_calls = st.lists(st.fixed_dictionaries({"id": ids, "type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": hostile, "arguments": st.one_of(hostile, st.sampled_from(["{}", "[1,2]", '"x"', "{bad", "1"]))})}),
    max_size=2)
messages = st.lists(st.fixed_dictionaries(
    {"id": ids, "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "reasoning", "wizard"])},
    optional={"content": st.one_of(hostile, parts, values), "toolCalls": tool_calls, "toolCallId": ids,
              "name": hostile}), max_size=4)
context = st.dictionaries(st.sampled_from(["max_iterations", "tool_timeout", "run_timeout", "max_output_tokens",
                                           "model", "system_prompt", "user_id", "nope"]), values, max_size=3)
run_bodies = st.fixed_dictionaries(
    {"threadId": ids, "runId": ids, "messages": messages},
    optional={"state": st.one_of(values, nested), "forwardedProps": st.one_of(
        values, nested, st.fixed_dictionaries({"context": context})), "tools": st.lists(values, max_size=2),
        "context": st.lists(values, max_size=2), "resume": values, "parentRunId": ids},
).flatmap(lambda body: st.sampled_from([body, {k: v for k, v in body.items() if k != "threadId"}, body["messages"]]))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request, llm, tmp_path_factory):
    """The scripted LLM echoes; OpenPipe is configured but unreachable (so /threads gets past its setting).
    PostgreSQL too: it refuses NUL in text and long keys where SQLite does not."""
    database = {"LOOM_DATABASE_URL": POSTGRES_URL} if request.param == "postgres" else {}
    server = LoomServer(tmp_path_factory.mktemp("fuzz"), **database, LOOM_LLM_BASE_URL=llm.url,
                        LOOM_OPENPIPE_API_KEY="k", LOOM_OPENPIPE_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1",
                        LOOM_OPENPIPE_TIMEOUT="1",
                        LOOM_OPENPIPE_MAX_RETRIES="0", LOOM_RUN_TIMEOUT="10").start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        server.client = client
        yield server
    server.stop()
    print("fuzz:", stats)


def encode(value) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: NUL and lone surrogates travel as \\u escapes


def path_of(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def check(response: httpx.Response) -> None:
    stats["cases"] += 1
    stats["5xx"] += response.status_code >= 500
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        pytest.fail(f"{response.status_code} is not in loom's error shape: {response.text[:300]}")
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    assert response.status_code < 500 or error["code"] in UPSTREAM_CODES, (response.status_code, error)


@FUZZ
@given(body=run_bodies, graph=st.sampled_from(["agent", "memory"]))
def test_fuzz_runs(target, body, graph):
    with target.client.stream("POST", f"/agents/{graph}", content=encode(body),
                              headers={"content-type": "application/json"}) as response:
        raw = response.read()
    check(response)
    if response.status_code == 200:
        events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert events[-1]["type"] in ("RUN_FINISHED", "RUN_ERROR"), events[-3:]
        assert events[-1].get("code") != "INTERNAL_ERROR", events[-1]


@FUZZ
@given(op=st.sampled_from(["add", "get", "patch", "delete", "search", "list"]), text=hostile, tags=st.one_of(
    st.lists(hostile, max_size=3), values), memory_id=ids, user=hostile, raw=st.one_of(st.none(), values, nested))
def test_fuzz_memories(target, op, text, tags, memory_id, user, raw):
    payload = raw if raw is not None else {"content": text, "tags": tags}
    requests = {
        "add": ("POST", "/memories", payload), "patch": ("PATCH", f"/memories/{path_of(memory_id)}", payload),
        "get": ("GET", f"/memories/{path_of(memory_id)}", None), "list": ("GET", f"/memories?limit={len(text)}", None),
        "delete": ("DELETE", f"/memories/{path_of(memory_id)}", None),
        "search": ("GET", f"/memories/search?q={path_of(text)}&user={path_of(user)}", None),
    }
    method, path, sent = requests[op]
    check(target.client.request(method, path, content=None if sent is None else encode(sent),
                                headers={"content-type": "application/json"}))


@FUZZ
@given(thread_id=ids, body=st.one_of(values, nested, st.fixed_dictionaries(
    {"dataset": hostile}, optional={"split": hostile, "metadata": values, "include_system": values})))
def test_fuzz_threads(target, thread_id, body):
    check(target.client.post(f"/threads/{path_of(thread_id)}/dataset", content=encode(body),
                             headers={"content-type": "application/json"}))


openai_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "wizard"])},
    optional={"content": st.one_of(hostile, parts, values), "tool_calls": tool_calls, "tool_call_id": ids,
              "name": hostile}), max_size=4)
openai_bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["agent", "memory", "moa"]), hostile), "messages": openai_messages},
    optional={"stream": values, "temperature": values, "max_tokens": values, "stop": values, "seed": values,
              "tools": st.lists(values, max_size=2), "tool_choice": values, "user": hostile, "n": values,
              "stream_options": values, "loom": st.one_of(values, nested, st.fixed_dictionaries({"context": context}))},
).flatmap(lambda body: st.sampled_from([body, body["messages"], {k: v for k, v in body.items() if k != "model"}]))


@FUZZ
@given(body=openai_bodies, thread=st.one_of(st.none(), ids))
def test_fuzz_openai_chat_completions(target, body, thread):
    """The OpenAI edge answers in OpenAI's error shape, never a 500; a stream ends in [DONE] or an error."""
    headers = {"content-type": "application/json"}
    # Only what HTTP can carry in a header reaches loom (the HTTP parser refuses control characters itself).
    if thread is not None and (value := "".join(c for c in thread if " " <= c <= "~").strip()):
        headers["x-loom-thread"] = value
    with target.client.stream("POST", "/v1/chat/completions", content=encode(body), headers=headers) as response:
        raw = response.read().decode()
    stats["cases"] += 1
    stats["5xx"] += response.status_code >= 500
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and "type" in error, error
        assert response.status_code < 500 or error.get("code") not in (None, "internal_error"), error
    elif raw.startswith("data: "):
        frames = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
        assert frames[-1] == "[DONE]" or "error" in json.loads(frames[-1]), frames[-2:]


@FUZZ
@given(thread_id=ids, task=hostile, body=st.one_of(values, nested))
def test_fuzz_thread_reads_and_tasks(target, thread_id, task, body):
    check(target.client.get(f"/threads/{path_of(thread_id)}/messages"))
    check(target.client.post(f"/tasks/{path_of(task)}", content=encode(body),
                             headers={"content-type": "application/json"}))


def test_the_server_is_healthy_after_the_fuzz(target):
    assert target.client.get("/health").json()["status"] == "ok"
    assert "Traceback" not in target.log(), target.log()[-3000:]
