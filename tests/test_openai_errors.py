"""Failures on the OpenAI edge surface as the openai SDK's own exception classes, and no stream ends silently."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import LoomServer
from tests.test_openai_api import client, hi


@pytest.fixture(scope="module")
def keyed(llm, tmp_path_factory):
    """loom with API keys (one user key, one proxy key) and a small body limit."""
    server = LoomServer(tmp_path_factory.mktemp("loom-keys"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_API_KEYS="alice-key=user:alice,owui-key=proxy", LOOM_MAX_BODY_BYTES="20000").start()
    yield server
    server.stop()


def test_missing_and_wrong_keys_are_authentication_errors(keyed):
    with client(keyed, "wrong") as c, pytest.raises(openai.AuthenticationError, match="not valid") as error:
        c.models.list()
    assert error.value.body["type"] == "authentication_error" and error.value.code == "invalid_api_key"
    with client(keyed, "wrong") as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="agent", messages=hi())


def test_proxy_key_user_comes_from_openwebui_header_then_user_field(llm, keyed):
    with client(keyed, "owui-key") as c:
        with pytest.raises(openai.UnprocessableEntityError, match="required with a proxy"):
            c.chat.completions.create(model="agent", messages=hi())
        header = c.chat.completions.with_raw_response.create(
            model="agent", messages=hi(), user="from-field", extra_headers={"X-OpenWebUI-User-Id": "from-header"})
        field = c.chat.completions.with_raw_response.create(model="agent", messages=hi(), user="from-field")
    runs = [line for line in keyed.log().splitlines() if "loom.run: run graph=agent" in line]
    thread_of = {line.split("thread=")[1].split()[0]: line.split("user=")[1].split()[0] for line in runs}
    assert thread_of[header.headers["x-loom-thread"]] == "from-header"
    assert thread_of[field.headers["x-loom-thread"]] == "from-field"


def test_a_user_key_acts_for_its_own_user_whatever_is_named(keyed):
    with client(keyed, "alice-key") as c:
        reply = c.chat.completions.with_raw_response.create(model="agent", messages=hi(), user="mallory",
                                                            extra_headers={"X-OpenWebUI-User-Id": "mallory"})
    thread = reply.headers["x-loom-thread"]
    assert f"thread={thread} " in keyed.log() and "user=alice" in keyed.log().split(f"thread={thread} ")[1][:200]


def test_bad_requests(keyed):
    with client(keyed, "alice-key") as c:
        with pytest.raises(openai.NotFoundError, match="'gpt-4' does not exist"):
            c.chat.completions.create(model="gpt-4", messages=hi())
        with pytest.raises(openai.BadRequestError, match="only n=1") as error:
            c.chat.completions.create(model="agent", messages=hi(), n=2)
        assert error.value.param == "n" and error.value.body["type"] == "invalid_request_error"
        with pytest.raises(openai.BadRequestError, match="messages: a non-empty list"):
            c.chat.completions.create(model="agent", messages=[])
        with pytest.raises(openai.BadRequestError, match=r"messages\[0\].role: 'function' is not supported"):
            c.chat.completions.create(model="agent", messages=[{"role": "function", "name": "f", "content": "x"}])
        with pytest.raises(openai.BadRequestError, match="answers no tool call"):
            c.chat.completions.create(model="agent", messages=[*hi(), {"role": "tool", "tool_call_id": "nope",
                                                                        "content": "x"}])
        with pytest.raises(openai.APIStatusError, match="exceeds 20000 bytes") as error:
            c.chat.completions.create(model="agent", messages=hi("x" * 30000))
        assert error.value.status_code == 413


def test_model_server_failures_map_to_sdk_classes(llm, loom_sqlite):
    llm.script({"status": 429, "repeat": True})
    with client(loom_sqlite) as c, pytest.raises(openai.RateLimitError, match="rate limiting"):
        c.chat.completions.create(model="agent", messages=hi())
    llm.reset()
    llm.script({"status": 500, "error_message": "model crashed", "repeat": True})
    with client(loom_sqlite) as c, pytest.raises(openai.InternalServerError, match="model crashed") as error:
        c.chat.completions.create(model="agent", messages=hi())
    assert error.value.status_code == 502 and error.value.code == "LLM_BAD_RESPONSE"


def test_a_failure_mid_stream_raises_in_the_sdk(llm, loom_sqlite):
    llm.script({"text": "one two three four five", "error_event_after_tokens": 2, "error_message": "GPU fell over"})
    received = []
    with client(loom_sqlite) as c, pytest.raises(openai.APIError, match="GPU fell over") as error:
        for chunk in c.chat.completions.create(model="agent", messages=hi(), stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "one two"  # what came before the failure, then an exception, not a quiet end
    assert error.value.code == "LLM_BAD_RESPONSE"


def test_a_second_run_on_a_busy_thread_is_a_conflict(llm, loom_sqlite):
    llm.script({"hang": True})
    header = {"X-Loom-Thread": "busy-thread"}
    with client(loom_sqlite) as c:
        stream = c.chat.completions.create(model="agent", messages=hi(), stream=True, extra_headers=header)
        next(iter(stream))  # the run is under way (its first chunk arrived)
        with pytest.raises(openai.ConflictError, match="already has a run in progress"):
            c.chat.completions.create(model="agent", messages=hi(), extra_headers=header)
        stream.close()  # the client leaves: the run is cancelled, the thread free again
        llm.wait_request(lambda r: r["outcome"] == "disconnected")
        llm.reset()
        assert c.chat.completions.create(model="agent", messages=hi("again"), extra_headers=header).choices
