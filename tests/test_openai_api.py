"""The OpenAI Chat Completions edge with the official openai SDK (sync and async) against `loom serve`."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import openai
import pytest

from tests.conftest import LoomServer


def client(loom: LoomServer, key: str = "unused", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{loom.url}/v1", api_key=key, max_retries=0, **kwargs)


def async_client(loom: LoomServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{loom.url}/v1", api_key="unused", max_retries=0)


def hi(text: str = "hi") -> list[dict]:
    return [{"role": "user", "content": text}]


def model_messages(request: dict) -> list[tuple[str, str]]:
    """(role, text) of what loom sent the model, without its system prompt."""
    out = []
    for m in request["body"]["messages"]:
        if m["role"] != "system":
            content = m.get("content") or ""
            out.append((m["role"], content if isinstance(content, str) else json.dumps(content)))
    return out


# ------------------------------------------------------------------------------------------------- models


def test_models_list_and_retrieve(loom_sqlite):
    with client(loom_sqlite) as c:
        models = c.models.list()
        graphs = httpx.get(f"{loom_sqlite.url}/health").json()["graphs"]
        assert sorted(m.id for m in models) == graphs
        assert {m.owned_by for m in models} == {"loom"}
        assert c.models.retrieve("agent").id == "agent"
        with pytest.raises(openai.NotFoundError, match="does not exist") as error:
            c.models.retrieve("gpt-4")
        assert error.value.code == "model_not_found"


# ------------------------------------------------------------------------------------------------ answers


def test_non_streamed_answer_has_reasoning_and_the_runs_usage(llm, loom_sqlite):
    llm.script({"text": "Hello there", "reasoning": "thinking it over", "usage": {"prompt_tokens": 11,
                                                                                 "completion_tokens": 7}})
    with client(loom_sqlite) as c:
        reply = c.chat.completions.create(model="agent", messages=hi())
    choice = reply.choices[0]
    assert choice.message.content == "Hello there"
    assert choice.message.model_extra["reasoning_content"] == "thinking it over"
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (11, 7, 18)


def test_usage_sums_every_model_call_of_the_run(llm, loom_sqlite):
    llm.script({"tool_calls": [{"id": "c1", "name": "calculator", "arguments": {"expression": "6*7"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
               {"text": "42", "usage": {"prompt_tokens": 20, "completion_tokens": 1}})
    with client(loom_sqlite) as c:
        reply = c.chat.completions.create(model="agent", messages=hi("6*7?"))
    assert reply.choices[0].message.content == "42"
    assert reply.choices[0].message.tool_calls is None  # a server-side call is never the client's to run
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (30, 6)


def test_async_stream_deltas_and_final_usage_chunk(llm, loom_sqlite):
    llm.script({"text": "one two three", "reasoning": "hmm", "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
               {"text": "again"})

    async def main() -> tuple[list, list]:
        async with async_client(loom_sqlite) as c:
            with_usage = [chunk async for chunk in await c.chat.completions.create(
                model="agent", messages=hi(), stream=True, stream_options={"include_usage": True})]
            without = [chunk async for chunk in await c.chat.completions.create(
                model="agent", messages=hi(), stream=True)]
        return with_usage, without

    chunks, plain = asyncio.run(main())
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "one two three"
    assert len([d for d in deltas if d.content]) == 3  # streamed token by token, not in one piece
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "hmm"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7
    assert all(c.usage is None for c in plain) and "".join(c.choices[0].delta.content or "" for c in plain) == "again"


# ------------------------------------------------------------------------------------------- client tools


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.mark.parametrize("stream", [False, True])
def test_client_tool_round_trip(llm, loom_sqlite, stream):
    llm.script({"tool_calls": [{"id": "call_w", "name": "get_weather", "arguments": {"city": "Paris"}}]},
               {"text": "Sunny in Paris."})
    messages = hi("Weather in Paris?")
    with client(loom_sqlite) as c:
        if stream:
            chunks = list(c.chat.completions.create(model="agent", messages=messages, tools=[WEATHER], stream=True))
            parts = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
            call = {"id": parts[0].id, "name": parts[0].function.name,
                    "arguments": "".join(p.function.arguments or "" for p in parts)}
            finish = chunks[-1].choices[0].finish_reason
        else:
            reply = c.chat.completions.create(model="agent", messages=messages, tools=[WEATHER])
            tc = reply.choices[0].message.tool_calls[0]
            call, finish = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}, \
                reply.choices[0].finish_reason
        assert finish == "tool_calls"
        assert call["id"] == "call_w" and call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Paris"}
        assert llm.requests()[0]["body"]["tools"][-1]["function"]["name"] == "get_weather"
        function = {"name": call["name"], "arguments": call["arguments"]}
        messages += [{"role": "assistant", "content": None,
                      "tool_calls": [{"id": call["id"], "type": "function", "function": function}]},
                     {"role": "tool", "tool_call_id": "call_w", "content": "22 C, sunny"}]
        reply = c.chat.completions.create(model="agent", messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == "Sunny in Paris."
    assert reply.choices[0].finish_reason == "stop"
    sent = llm.requests()[1]["body"]["messages"]
    assert [m for m in sent if m["role"] == "tool"] == [{"role": "tool", "content": "22 C, sunny",
                                                       "tool_call_id": "call_w"}]


def test_tool_choice_none_offers_no_client_tools(llm, loom_sqlite):
    with client(loom_sqlite) as c:
        c.chat.completions.create(model="agent", messages=hi(), tools=[WEATHER], tool_choice="none")
        with pytest.raises(openai.BadRequestError, match="tool_choice"):
            c.chat.completions.create(model="agent", messages=hi(), tools=[WEATHER], tool_choice="required")
    names = [t["function"]["name"] for t in llm.requests()[0]["body"].get("tools", [])]
    assert "get_weather" not in names


# ---------------------------------------------------------------------------------------------- threads


def test_threaded_conversation_sends_no_duplicates_and_regenerate_forks(llm, loom_sqlite):
    thread = f"t-{uuid.uuid4()}"
    header = {"X-Loom-Thread": thread}
    llm.script({"text": "First answer."}, {"text": "Second answer."}, {"text": "Second, regenerated."})
    with client(loom_sqlite) as c:
        one = c.chat.completions.with_raw_response.create(model="agent", messages=hi("one"), extra_headers=header)
        assert one.headers["x-loom-thread"] == thread
        history = [*hi("one"), {"role": "assistant", "content": one.parse().choices[0].message.content},
                   *hi("two")]
        two = c.chat.completions.create(model="agent", messages=history, extra_headers=header)
        assert two.choices[0].message.content == "Second answer."
        regenerated = c.chat.completions.create(model="agent", messages=history, extra_headers=header)
    assert regenerated.choices[0].message.content == "Second, regenerated."
    expected = [("user", "one"), ("assistant", "First answer."), ("user", "two")]
    assert model_messages(llm.requests()[1]) == expected  # the full history once, not the stored copy twice
    assert model_messages(llm.requests()[2]) == expected  # the regenerate replaced the answer: a fork
    stored = httpx.get(f"{loom_sqlite.url}/threads/{thread}/messages").json()["messages"]
    assert [(m["role"], m.get("content")) for m in stored] == [*expected, ("assistant", "Second, regenerated.")]


def test_continuing_keeps_the_stored_turn_with_its_server_tool_calls(llm, loom_sqlite):
    llm.script({"tool_calls": [{"id": "c7", "name": "calculator", "arguments": {"expression": "6*7"}}]},
               {"text": "It is 42."}, {"text": "You are welcome."})
    header = {"X-Loom-Thread": f"t-{uuid.uuid4()}"}
    with client(loom_sqlite) as c:
        answer = c.chat.completions.create(model="agent", messages=hi("6*7?"), extra_headers=header)
        history = [*hi("6*7?"), {"role": "assistant", "content": answer.choices[0].message.content}, *hi("thanks")]
        c.chat.completions.create(model="agent", messages=history, extra_headers=header)
    sent = llm.requests()[2]["body"]["messages"][1:]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["tool_calls"][0]["id"] == "c7" and sent[2]["content"] == "42"


def test_without_a_thread_hint_every_request_is_a_fresh_thread(llm, loom_sqlite):
    with client(loom_sqlite) as c:
        first = c.chat.completions.with_raw_response.create(model="agent", messages=hi("a"))
        second = c.chat.completions.with_raw_response.create(model="agent", messages=hi("a"))
    assert first.headers["x-loom-thread"] != second.headers["x-loom-thread"]
    assert model_messages(llm.requests()[1]) == [("user", "a")]


def test_openwebui_chat_header_is_the_pipes_thread(llm, loom_sqlite):
    with client(loom_sqlite) as c:
        reply = c.chat.completions.with_raw_response.create(
            model="agent", messages=hi(), extra_headers={"X-OpenWebUI-Chat-Id": "chat-9", "X-OpenWebUI-User-Id": "u1"})
    assert reply.headers["x-loom-thread"] == "openwebui-chat-9-agent"


# ---------------------------------------------------------------------------------------------- context


def test_loom_context_overrides_and_unknown_keys(llm, loom_sqlite):
    with client(loom_sqlite) as c:
        c.chat.completions.create(model="agent", messages=hi(),
                                  extra_body={"loom": {"context": {"system_prompt": "Talk like a pirate."}}})
        assert llm.requests()[0]["body"]["messages"][0]["content"].startswith("Talk like a pirate.")
        with pytest.raises(openai.BadRequestError, match="loom.context.nonsense: unknown setting") as error:
            c.chat.completions.create(model="agent", messages=hi(), extra_body={"loom": {"context": {"nonsense": 1}}})
        assert error.value.param == "loom.context.nonsense"
        with pytest.raises(openai.BadRequestError, match="loom.context.max_iterations") as error:
            c.chat.completions.create(model="agent", messages=hi(),
                                      extra_body={"loom": {"context": {"max_iterations": 0}}})
        with pytest.raises(openai.BadRequestError, match="loom.colour: unknown field"):
            c.chat.completions.create(model="agent", messages=hi(), extra_body={"loom": {"colour": "red"}})


def test_sampling_parameters_reach_the_model_where_the_graph_takes_them(llm, loom_sqlite):
    with client(loom_sqlite) as c:
        reply = c.chat.completions.with_raw_response.create(
            model="agent", messages=hi(), temperature=0.3, max_completion_tokens=50, stop="END", seed=7, top_p=0.5)
        sent = llm.requests()[0]["body"]
        assert (sent["temperature"], sent["stop"], sent["seed"]) == (0.3, ["END"], 7)
        assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 50
        assert "top_p" not in sent and reply.headers["x-loom-ignored-params"] == "top_p"
        llm.reset()
        c.chat.completions.create(model="memory", messages=hi(), temperature=0.4, seed=3,
                                  extra_body={"loom": {"context": {"auto_save": False}}})
        assert (llm.requests()[0]["body"]["temperature"], llm.requests()[0]["body"]["seed"]) == (0.4, 3)
        moa = c.chat.completions.with_raw_response.create(model="moa", messages=hi(), temperature=0.3)
        assert moa.headers["x-loom-ignored-params"] == "temperature"  # MoA sets its proposers' own
        with pytest.raises(openai.BadRequestError, match="loom.context.temperature") as error:
            c.chat.completions.create(model="agent", messages=hi(), temperature=5)
        assert error.value.param == "loom.context.temperature"
