"""Confirmations, opt-in progress rendering, and LangChain's ChatOpenAI as a second, independent client."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from tests.test_openai_api import client, hi, model_messages

DELETE = {"tool_calls": [{"id": "c_del", "name": "delete_records", "arguments": {"table": "users"}}]}


def confirm_call(reply) -> dict:
    assert reply.choices[0].finish_reason == "tool_calls"
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "loom_confirm"
    return {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                            "arguments": call.function.arguments}}


def tool_results(request: dict) -> list[str]:
    return [m["content"] for m in request["body"]["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("answer, result", [
    ("yes", "deleted all records of users"),
    ('{"approved": false, "reason": "keep them"}', "The user rejected this tool call. Reason: keep them"),
    ("no, not today", "The user rejected this tool call. Reason: no, not today"),
])
def test_confirmation_is_a_tool_call_the_caller_answers(llm, loom_sqlite, answer, result):
    llm.script(DELETE, {"text": "Done."})
    with client(loom_sqlite) as c:  # no thread header: the call id leads back to the thread
        first = c.chat.completions.create(model="agent", messages=hi("Delete the users table"))
        call = confirm_call(first)
        assert json.loads(call["function"]["arguments"]) == {
            "message": 'Allow delete_records({"table": "users"})?', "tool": "delete_records",
            "arguments": {"table": "users"}}
        history = [*hi("Delete the users table"), {"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": call["id"], "content": answer}]
        second = c.chat.completions.create(model="agent", messages=history)
    assert second.choices[0].message.content == "Done."
    assert tool_results(llm.requests()[1]) == [result]


def test_a_pending_confirmation_is_never_left_hanging(llm, loom_sqlite):
    llm.script(DELETE, {"text": "Done."})
    header = {"X-Loom-Thread": "confirm-thread"}
    with client(loom_sqlite) as c:
        chunks = list(c.chat.completions.create(model="agent", messages=hi("Delete users"), stream=True,
                                                extra_headers=header))
        parts = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
        assert [p.function.name for p in parts] == ["loom_confirm"] and chunks[-1].choices[0].finish_reason == \
            "tool_calls"
        with pytest.raises(openai.ConflictError, match="answer the loom_confirm tool call"):
            c.chat.completions.create(model="agent", messages=[*hi("Delete users"), *hi("hello?")],
                                      extra_headers=header)
        call = {"id": parts[0].id, "type": "function",
                "function": {"name": "loom_confirm", "arguments": parts[0].function.arguments}}
        history = [*hi("Delete users"), {"role": "assistant", "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": call["id"], "content": "approve"}]
        assert c.chat.completions.create(model="agent", messages=history,
                                         extra_headers=header).choices[0].message.content == "Done."
        with pytest.raises(openai.BadRequestError, match="another thread"):
            c.chat.completions.create(model="agent", messages=history, extra_headers={"X-Loom-Thread": "other"})
        # The next turn re-sends the confirmation exchange: it is left out, and the
        # stored turn (the call, its result) stands for the answer the client shows.
        history += [{"role": "assistant", "content": "Done."}, *hi("thanks")]
        c.chat.completions.create(model="agent", messages=history, extra_headers=header)
    assert model_messages(llm.requests()[-1])[-2:] == [("assistant", "Done."), ("user", "thanks")]
    assert "loom_confirm" not in json.dumps(llm.requests()[-1]["body"]["messages"])
    assert tool_results(llm.requests()[-1]) == ["deleted all records of users"]  # the stored turn, kept


# --------------------------------------------------------------------------------------------- progress


CALC = {"tool_calls": [{"id": "c1", "name": "calculator", "arguments": {"expression": "6*7"}}]}


def test_server_tool_calls_are_rendered_only_when_asked(llm, loom_sqlite):
    llm.script(CALC, {"text": "It is 42."}, CALC, {"text": "It is 42."}, {"text": "ok"})
    header = {"X-Loom-Thread": "progress-thread"}
    with client(loom_sqlite) as c:
        plain = c.chat.completions.create(model="agent", messages=hi("6*7?"))
        assert plain.choices[0].message.content == "It is 42."
        shown = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="agent", messages=hi("6*7?"), stream=True, extra_headers={**header, "X-Loom-Progress": "1"})
            if ch.choices)
        assert shown.startswith('<details type="tool_calls" done="true" id="c1" name="calculator" ')
        assert shown.endswith("</details>\n\nIt is 42.")
        # The block comes back in the history as the call and its result, not as text for the model to read.
        c.chat.completions.create(model="agent", messages=[*hi("6*7?"), {"role": "assistant", "content": shown},
                                                           *hi("thanks")], extra_headers=header)
    sent = llm.requests()[-1]["body"]["messages"]
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[2]["tool_calls"][0]["function"]["name"] == "calculator" and sent[3]["content"] == "42"
    assert "<details" not in json.dumps(sent)


def test_moa_proposals_render_with_progress(llm, loom_sqlite):
    with client(loom_sqlite) as c:
        reply = c.chat.completions.create(model="moa", messages=hi("pick"), extra_body={"loom": {"progress": True}})
        quiet = c.chat.completions.create(model="moa", messages=hi("pick"))
    text = reply.choices[0].message.content
    assert text.startswith("<details>\n<summary>MoA layer 1: 3 proposer answers</summary>")
    assert text.endswith("</details>\n\n" + quiet.choices[0].message.content)


# ------------------------------------------------------------------------------------------------ LangChain


def test_langchain_chat_openai_invoke_stream_and_tools(llm, loom_sqlite):
    llm.script({"text": "Hello from loom", "usage": {"prompt_tokens": 4, "completion_tokens": 3}},
               {"text": "streamed answer"},
               {"tool_calls": [{"id": "call_lc", "name": "get_weather", "arguments": {"city": "Oslo"}}]})
    model = ChatOpenAI(base_url=f"{loom_sqlite.url}/v1", api_key="unused", model="agent", max_retries=0)
    reply = model.invoke([HumanMessage("hi")])
    assert reply.content == "Hello from loom"
    assert (reply.usage_metadata["input_tokens"], reply.usage_metadata["output_tokens"]) == (4, 3)

    async def stream() -> list[str]:
        return [chunk.content async for chunk in model.astream("hi")]

    parts = asyncio.run(stream())
    assert "".join(parts) == "streamed answer" and len([p for p in parts if p]) == 2

    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "cold"

    call = model.bind_tools([get_weather]).invoke("Weather in Oslo?")
    assert call.tool_calls == [{"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_lc",
                                "type": "tool_call"}]
