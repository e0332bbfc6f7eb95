"""The scripted LLM server, driven by the real openai SDK and langchain_openai over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from tests.llm_server import LLMServer

KEY = "sk-test-key"
USER = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def llm():
    # One server for the module (with auth on, so every test also proves the key is accepted).
    with LLMServer(api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(llm):
    llm.reset()


def oai(llm, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=llm.url, api_key=kw.pop("api_key", KEY), max_retries=0, **kw)


def chat(llm, model="mock-model") -> ChatOpenAI:
    return ChatOpenAI(base_url=llm.url, api_key=KEY, model=model, streaming=True, stream_usage=True,
                      max_retries=0)


async def test_openai_stream_text_and_usage(llm):
    llm.script({"text": "Hello there friend", "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    stream = await oai(llm).chat.completions.create(
        model="mock-model", messages=USER, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["Hello", " there", " friend"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 15
    [rec] = llm.requests()
    assert rec["body"]["messages"] == USER and rec["outcome"] == "ok" and rec["status"] == 200


async def test_unscripted_echo_non_stream_and_queues(llm):
    llm.script({"text": "for a", "repeat": True}, model="a")
    llm.script({"text": "anyone"})
    client = oai(llm)

    def ask(model):
        return client.chat.completions.create(model=model, messages=USER)

    texts = [(await ask(m)).choices[0].message.content for m in ("a", "b", "a", "b")]
    # "a" repeats its own script; "b" pops "*" once, then falls back to the echo default.
    assert texts == ["for a", "anyone", "for a", "echo: hi there"]


async def test_langchain_stream_text_and_usage(llm):
    llm.script({"text": "Hello there friend", "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    chunks = [c async for c in chat(llm).astream("hi")]
    assert [c.content for c in chunks if c.content] == ["Hello", " there", " friend"]
    total = sum(chunks[1:], chunks[0])
    assert total.content == "Hello there friend"
    usage = total.usage_metadata
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (10, 5, 15)
    assert total.response_metadata["finish_reason"] == "stop"


async def test_langchain_tool_call(llm):
    llm.script({"tool_calls": [{"id": "call_1", "name": "calculator", "arguments": {"expression": "2+2"}}]})
    tool = {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate arithmetic",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}
    chunks = [c async for c in chat(llm).bind_tools([tool]).astream("what is 2+2?")]
    fragments = [tc for c in chunks for tc in c.tool_call_chunks]
    assert fragments[0]["name"] == "calculator" and fragments[0]["id"] == "call_1"
    assert len(fragments) > 2 and all(f["index"] == 0 for f in fragments)  # arguments arrive in pieces
    total = sum(chunks[1:], chunks[0])
    assert total.tool_calls == [{"name": "calculator", "args": {"expression": "2+2"}, "id": "call_1",
                                 "type": "tool_call"}]
    assert total.response_metadata["finish_reason"] == "tool_calls"
    assert llm.requests()[0]["body"]["tools"] == [tool]


class ReasoningChatOpenAI(ChatOpenAI):
    """Shows the hook: the raw chunk dict still carries delta.reasoning_content."""

    def _convert_chunk_to_generation_chunk(self, chunk, default_chunk_class, base_generation_info):
        gen = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
        delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
        if gen is not None and delta.get("reasoning_content"):
            gen.message.additional_kwargs["reasoning_content"] = delta["reasoning_content"]
        return gen


async def test_reasoning_content(llm):
    llm.script({"reasoning": "let me think", "text": "4"})
    stream = await oai(llm).chat.completions.create(model="m", messages=USER, stream=True)
    deltas = [c.choices[0].delta async for c in stream if c.choices]
    # openai SDK: unknown delta fields are kept as pydantic extras, readable as attributes.
    reasoning = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
    assert "".join(reasoning) == "let me think"

    # ChatOpenAI (langchain-openai 1.7) DROPS reasoning_content: _convert_delta_to_message_chunk copies
    # only content/function_call/tool_calls, so it is in neither additional_kwargs nor content blocks.
    llm.script({"reasoning": "let me think", "text": "4"}, {"reasoning": "let me think", "text": "4"})
    chunks = [c async for c in chat(llm).astream("2+2?")]
    total: AIMessageChunk = sum(chunks[1:], chunks[0])
    assert total.content == "4" and "reasoning_content" not in total.additional_kwargs
    assert not [b for b in total.content_blocks if b["type"] == "reasoning"]
    # ... but the raw chunk dict reaches _convert_chunk_to_generation_chunk, so a subclass can keep it.
    model = ReasoningChatOpenAI(base_url=llm.url, api_key=KEY, model="m", streaming=True)
    chunks = [c async for c in model.astream("2+2?")]
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == "let me think"


async def test_error_statuses(llm):
    llm.script({"status": 429, "retry_after": 7, "error_message": "slow down"}, {"status": 500})
    client = oai(llm)
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="m", messages=USER, stream=True)
    assert err.value.response.headers["retry-after"] == "7" and err.value.message.endswith("slow down")
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=USER)
    assert [(r["status"], r["outcome"]) for r in llm.requests()] == [(429, "error"), (500, "error")]


async def test_auth(llm):
    with pytest.raises(openai.AuthenticationError) as err:
        await oai(llm, api_key="wrong").chat.completions.create(model="m", messages=USER)
    assert err.value.code == "invalid_api_key" and err.value.body["type"] == "invalid_request_error"
    assert llm.requests()[0]["status"] == 401


async def test_disconnect_after_tokens_and_bad_json(llm):
    llm.script({"text": "a b c d e", "disconnect_after_tokens": 2}, {"text": "x", "bad_json": True})
    client = oai(llm)
    got = []
    # The server closes the socket mid-body. openai 3.x (on httpx2) wraps the transport's
    # RemoteProtocolError("incomplete chunked read") into APIConnectionError even mid-stream.
    with pytest.raises(openai.APIConnectionError) as err:
        async for c in await client.chat.completions.create(model="m", messages=USER, stream=True):
            got.append(c.choices[0].delta.content)
    assert got == ["", "a", " b"] and "incomplete chunked read" in str(err.value.__cause__)
    with pytest.raises(json.JSONDecodeError):
        async for _ in await client.chat.completions.create(model="m", messages=USER, stream=True):
            pass
    assert [r["outcome"] for r in llm.requests()] == ["error", "ok"]


async def test_client_cancel_is_recorded_as_disconnected(llm):
    llm.script({"hang": True}, {"text": "a b c d e", "hang_after_tokens": 2})
    client = oai(llm)
    task = asyncio.ensure_future(client.chat.completions.create(model="m", messages=USER, stream=True))
    await asyncio.to_thread(llm.wait_request, lambda r: r["outcome"] == "hung")
    cancelled_at = time.time()
    task.cancel()
    rec = await asyncio.to_thread(llm.wait_request, lambda r: r["outcome"] == "disconnected")
    assert rec["first_byte_at"] is None and rec["ended_at"] >= cancelled_at - 0.01

    # Mid-stream: read two tokens, then close the stream (what a cancelled agent run does).
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    assert [(await anext(aiter(stream))).choices[0].delta.content for _ in range(3)] == ["", "a", " b"]
    await stream.close()
    rec = await asyncio.to_thread(llm.wait_request, lambda r: r["id"] != 1 and r["outcome"] == "disconnected")
    assert rec["first_byte_at"] < rec["ended_at"]


async def test_per_model_behaviour_and_overlap(llm):
    llm.set_model("slow", latency_ms=300, text="I am slow")
    llm.set_model("broken", fail_status=503)
    client = oai(llm)
    t0 = time.monotonic()
    a, b = await asyncio.gather(*(client.chat.completions.create(model="slow", messages=USER) for _ in "ab"))
    assert time.monotonic() - t0 < 0.55  # both waited 300 ms, concurrently
    assert a.choices[0].message.content == b.choices[0].message.content == "I am slow"
    r1, r2 = llm.requests()
    for r in (r1, r2):
        assert r["first_byte_at"] - r["started_at"] >= 0.29
    assert r1["started_at"] < r2["ended_at"] and r2["started_at"] < r1["ended_at"]
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="broken", messages=USER)
    llm.script({"text": "scripted wins"}, model="broken")
    assert (await client.chat.completions.create(model="broken", messages=USER)).choices[0].message.content \
        == "scripted wins"


async def test_embeddings_and_models(llm):
    client = oai(llm)
    # The openai SDK asks for base64 by default; langchain's OpenAIEmbeddings for floats.
    res = await client.embeddings.create(model="emb", input=["the cat sat", "the cat sat", "dogs bark"])
    v1, v2, v3 = (d.embedding for d in res.data)
    assert len(v1) == 64 and v1 == v2 and v1 != v3 and math.isclose(sum(x * x for x in v1), 1, rel_tol=1e-5)
    lc = OpenAIEmbeddings(base_url=llm.url, api_key=KEY, model="emb", check_embedding_ctx_length=False)
    assert max(abs(x - y) for x, y in zip(await lc.aembed_query("the cat sat"), v1, strict=True)) < 1e-6
    assert "mock-model" in [m.id async for m in client.models.list()]


def test_cli_benchmark_mode():
    with LLMServer(extra_args=["--ttft-ms", "50", "--token-delay-ms", "5", "--tokens", "20"]) as srv:
        t0 = time.monotonic()
        with httpx.stream("POST", f"{srv.url}/chat/completions", json={
                "model": "bench", "stream": True, "messages": USER}) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
        assert 0.05 + 19 * 0.005 <= time.monotonic() - t0 < 1.0
        assert len(lines) == 22  # role + 20 tokens + finish
        rec = srv.requests()[0]
        assert rec["first_byte_at"] - rec["started_at"] >= 0.045
