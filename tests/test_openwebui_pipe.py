"""The OpenWebUI pipe against a real loom server (scripted LLM, proxy key), driven the way OpenWebUI 0.12 calls
it: `Pipe().pipe(body, __user__=..., __event_emitter__=..., ...)` with a recording emitter, a fake
`__event_call__` and fake `__tools__`: the models it lists, what the chat shows, history, tasks, valves.

Failures are in test_openwebui_pipe_failures.py, the rendered single file in test_openwebui_pipe_file.py, the
pure rendering and history units in test_openwebui_render.py; what needs a real OpenWebUI (the functions API,
socket.io events, UI-mode chats) is in test_openwebui_e2e.py.
"""

from __future__ import annotations

import functools
import json
import re
from types import SimpleNamespace

import httpx
import pytest

from loom.adapters.openwebui.pipe import Pipe
from tests.conftest import new_id
from tests.openwebui_pipe_kit import (
    PROXY_KEY,
    WEATHER_SPEC,
    Emitter,
    a,
    a_user,
    block,
    call,
    chat,
    dead_url,
    make_pipe,
    u,
    wait_for_log,
)
from tests.openwebui_pipe_kit import pipe_loom as pipe_loom_fixture

loom = pipe_loom_fixture  # the module's server (a fixture shared by the pipe test modules)


# --------------------------------------------------------------------------------------------- manifold


async def test_pipes_lists_the_graphs_live_and_one_model_when_loom_is_down(loom):
    pipe = make_pipe(loom)
    models = await pipe.pipes()
    assert {"agent", "moa", "memory"} <= {m["id"] for m in models}
    assert all(m["name"] == m["id"] for m in models) and pipe.name == "loom/"

    pipe.valves = Pipe.Valves(loom_url=dead_url())
    [model] = await pipe.pipes()
    assert model["id"] == "unavailable" and "loom is unreachable" in model["name"]

    pipe.valves = Pipe.Valves(loom_url=loom.url, api_key="wrong")
    [model] = await pipe.pipes()
    assert model["id"] == "unavailable" and "refused the API key" in model["name"]


# ---------------------------------------------------------------------------------------------- rendering


async def test_text_streams_and_status_ends_done(loom, llm):
    llm.script({"text": "Hello there, how can I help?"})
    emitter, user = Emitter(), a_user()
    text, items = await chat(make_pipe(loom), [u("hi")], event_emitter=emitter, user=user)
    assert text == "Hello there, how can I help?"
    assert len(items) > 1 and all(isinstance(i, str) for i in items)  # streamed as it came
    statuses = emitter.statuses()
    assert statuses[-1]["done"] is True and not any(s["done"] for s in statuses[:-1])
    wait_for_log(loom, f"user={user['id']}", "outcome=success")  # the OpenWebUI user reached loom


async def test_backend_tool_call_is_an_openwebui_tool_call_block(loom, llm):
    llm.script({"tool_calls": [call("call_calc", "calculator", {"expression": "6*7"})]}, {"text": "It is 42."})
    emitter = Emitter()
    text, _ = await chat(make_pipe(loom), [u("6*7?")], event_emitter=emitter)
    assert text == block("call_calc", "calculator", "{&quot;expression&quot;: &quot;6*7&quot;}", "42") + "\nIt is 42."
    assert emitter.statuses()[-1]["description"].startswith("1 tool call · ")

    llm.script({"tool_calls": [call("call_calc2", "calculator", {"expression": "1+1"})]}, {"text": "2."})
    text, _ = await chat(make_pipe(loom, show_tool_calls=False), [u("1+1?")])
    assert text == "2."


@pytest.mark.parametrize("unit, shown", [("C", "Lyon: 21°C"), ("F", "Lyon: 70°F")])
async def test_openwebui_tools_are_frontend_tools_run_with_the_users_valves(loom, llm, unit, shown):
    async def get_weather(city: str, __user__: dict) -> str:
        return f"{city}: 21°C" if __user__["valves"].unit == "C" else f"{city}: 70°F"

    async def search_web(query: str) -> str:
        raise AssertionError("a built-in tool must not be offered")

    tools = {  # what OpenWebUI passes: callables with the reserved arguments (the user's tool valves) bound
        "get_weather": {"tool_id": "weather", "spec": WEATHER_SPEC, "metadata": {"file_handler": False},
                        "callable": functools.partial(get_weather, __user__={"valves": SimpleNamespace(unit=unit)})},
        "search_web": {"tool_id": "builtin", "type": "builtin", "callable": search_web,
                       "spec": {"name": "search_web", "description": "Search.", "parameters": {"type": "object"}}},
    }
    llm.script({"tool_calls": [call("call_w", "get_weather", {"city": "Lyon"})]}, {"text": f"It is {shown[6:]}."})
    text, _ = await chat(make_pipe(loom), [u("Weather in Lyon?")], tools=tools)

    first, second = llm.requests()
    offered = [t["function"]["name"] for t in first["body"]["tools"]]
    assert "get_weather" in offered and "search_web" not in offered
    assert second["body"]["messages"][-1] == {"role": "tool", "tool_call_id": "call_w", "content": shown}
    assert text == block("call_w", "get_weather", "{&quot;city&quot;: &quot;Lyon&quot;}", shown) + \
        f"\nIt is {shown[6:]}."


async def test_builtin_tools_are_offered_when_the_valve_says_so(loom, llm):
    async def search_web(query: str) -> str:
        return "nothing"

    tools = {"search_web": {"type": "builtin", "callable": search_web,
                            "spec": {"name": "search_web", "description": "Search.", "parameters": {}}}}
    llm.script({"text": "ok"})
    await chat(make_pipe(loom, offer_builtin_tools=True), [u("hi")], tools=tools)
    assert "search_web" in [t["function"]["name"] for t in llm.requests()[0]["body"]["tools"]]


async def test_a_failing_or_unknown_tool_is_an_error_result_and_rounds_are_bounded(loom, llm):
    async def broken(city: str) -> str:
        raise RuntimeError("weather service down")

    tools = {"get_weather": {"spec": WEATHER_SPEC, "callable": broken}}
    llm.script({"tool_calls": [call("c1", "get_weather", {"city": "Oslo"})]},
               {"tool_calls": [call("c2", "get_weather", {"city": "Oslo"})]},
               {"tool_calls": [call("c3", "get_weather", {"city": "Oslo"})]})
    text, _ = await chat(make_pipe(loom, max_tool_rounds=2), [u("Weather?")], tools=tools)
    assert text.count("Error: RuntimeError: weather service down") == 2  # two rounds, then the bound
    assert "more than 2 rounds of tool calls" in text
    assert llm.requests()[1]["body"]["messages"][-1]["content"] == "Error: RuntimeError: weather service down"
    assert len(llm.requests()) == 3


@pytest.mark.parametrize("approve", [True, False])
async def test_confirmation_interrupt_becomes_openwebuis_dialog(loom, llm, approve):
    llm.script({"tool_calls": [call("call_del", "delete_records", {"table": "sessions"})]},
               {"text": "Done." if approve else "Not deleted."})
    asked = []

    async def event_call(request: dict):
        asked.append(request)
        return approve

    text, _ = await chat(make_pipe(loom), [u("Clear the sessions table")], event_call=event_call)
    assert asked == [{"type": "confirmation", "data": {"title": "Allow delete_records?",
                                                       "message": 'Allow delete_records({"table": "sessions"})?'}}]
    told = llm.requests()[1]["body"]["messages"][-1]
    if approve:
        assert told["content"] == "deleted all records of sessions"
        assert text == block("call_del", "delete_records", "{&quot;table&quot;: &quot;sessions&quot;}",
                             "deleted all records of sessions") + "\nDone."
    else:
        assert told["content"] == "The user rejected this tool call."
        assert text.endswith("The user rejected this tool call.\n</details>\n\nNot deleted.")


async def test_the_confirm_tools_valve_makes_a_tool_ask_first(loom, llm):
    llm.script({"tool_calls": [call("call_c", "calculator", {"expression": "6*7"})]}, {"text": "It is 42."},
               {"text": "Paris."}, {"text": "Paris."}, {"text": "Paris."}, {"text": "Paris."})
    asked = []

    async def event_call(request: dict):
        asked.append(request["data"]["title"])
        return True

    pipe = make_pipe(loom, confirm_tools="delete_records, calculator")
    text, _ = await chat(pipe, [u("6*7?")], event_call=event_call)
    assert asked == ["Allow calculator?"] and text.endswith("\nIt is 42.")
    assert llm.requests()[1]["body"]["messages"][-1]["content"] == "42"
    text, _ = await chat(pipe, [u("Capital of France?")], model="loom.moa")  # its context has no such field
    assert text == "Paris."


@pytest.mark.parametrize("event_call", [None, "disconnected"])
async def test_without_a_dialog_the_pipe_says_what_waits_and_declines(loom, llm, event_call):
    async def api_mode(request: dict):  # what OpenWebUI's __event_call__ answers for API callers
        return {"error": "Client session disconnected."}

    llm.script({"tool_calls": [call("call_del", "delete_records", {"table": "users"})]}, {"text": "I did not."})
    emitter = Emitter()
    text, _ = await chat(make_pipe(loom), [u("Delete all users")], event_emitter=emitter,
                         event_call=api_mode if event_call else None)
    assert '> ⏸ **Needs approval**\n> Allow delete_records({"table": "users"})? — this client cannot show ' \
           "OpenWebUI's confirmation dialog, so it was declined." in text
    told = llm.requests()[1]["body"]["messages"][-1]["content"]
    assert told.startswith("The user rejected this tool call. Reason: The user could not be asked")
    assert text.endswith("I did not.") and emitter.statuses()[-1]["done"] is True


# ------------------------------------------------------------------------------------------------ history


async def test_regenerate_forks_and_a_next_turn_duplicates_nothing(loom, llm):
    pipe, chat_id = make_pipe(loom), new_id()
    llm.script({"text": "First answer."}, {"text": "Second answer."}, {"text": "Third."})
    first, _ = await chat(pipe, [u("Tell me a joke")], chat_id=chat_id)
    regenerated, _ = await chat(pipe, [u("Tell me a joke")], chat_id=chat_id)  # the last answer dropped
    assert (first, regenerated) == ("First answer.", "Second answer.")
    sent = llm.requests()[1]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [("user", "Tell me a joke")]  # forked, not appended

    await chat(pipe, [u("Tell me a joke"), a(regenerated), u("Another one")], chat_id=chat_id)
    sent = llm.requests()[2]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "Tell me a joke"), ("assistant", "Second answer."), ("user", "Another one")]


async def test_the_pipes_blocks_come_back_as_tool_messages_not_text(loom, llm):
    pipe, chat_id = make_pipe(loom), new_id()
    llm.script({"reasoning": "Multiply them.", "tool_calls": [call("call_m", "calculator", {"expression": "6*7"})]},
               {"text": "It is 42."}, {"text": "You asked for 6*7."})
    first, _ = await chat(pipe, [u("6*7?")], chat_id=chat_id)
    assert re.match(r'<details type="reasoning" done="true" duration="(\d+)">\n<summary>Thought for \1 seconds'
                    r'</summary>\n> Multiply them.\n</details>\n\n<details type="tool_calls"', first), first

    await chat(pipe, [u("6*7?"), a(first), u("What did I ask?")], chat_id=chat_id)
    sent = llm.requests()[2]["body"]["messages"]
    assert not any("<details" in json.dumps(m) for m in sent)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[2]["tool_calls"][0]["id"] == "call_m" and sent[3] == {"role": "tool", "tool_call_id": "call_m",
                                                                      "content": "42"}
    assert sent[4]["content"] == "It is 42."



async def test_attached_file_text_reaches_the_model(loom, llm):
    llm.script({"text": "On Friday."})
    files = [{"type": "file", "name": "notes.txt", "file": {"data": {"content": "The launch is on Friday."}}}]
    await chat(make_pipe(loom), [u("When is the launch?")], files=files)
    system = llm.requests()[0]["body"]["messages"][0]["content"]
    assert "Text of the attached file notes.txt: The launch is on Friday." in system


# -------------------------------------------------------------------------------------- tasks, modes, valves


async def test_background_tasks_are_one_model_call_not_a_graph_run(loom, llm):
    llm.script({"text": '{"follow_ups": ["Why the moon?", "And in Brittany?"]}'})
    prompt = "### Task: suggest follow-ups\n<chat_history>USER: tides?</chat_history>"
    task_body = {"messages": [u("tides?"), a("")]}  # the chat the task is about; the prompt is the body's
    answer, _ = await chat(make_pipe(loom), [u(prompt)], model="loom.moa", task="follow_up_generation",
                           task_body=task_body)
    assert json.loads(answer) == {"follow_ups": ["Why the moon?", "And in Brittany?"]}
    [request] = llm.requests()  # one call, not MoA's proposers and aggregator
    assert request["body"]["messages"] == [{"role": "user", "content": prompt}]
    assert not request["body"].get("stream") and not request["body"].get("tools")


async def test_a_failed_task_call_falls_back_to_the_local_answer(loom, llm):
    llm.script({"status": 500}, {"status": 500}, {"status": 500})
    task_body = {"messages": [u("Tides in Brittany?")]}
    for pipe in (make_pipe(loom), make_pipe(dead_url())):
        title, _ = await chat(pipe, [u("### Task: a title")], task="title_generation", task_body=task_body)
        assert json.loads(title) == {"title": "Tides in Brittany?"}


async def test_background_tasks_are_answered_at_once_with_the_local_tasks_valve(loom, llm):
    pipe = make_pipe(dead_url(), local_tasks=True)  # not even loom is asked
    task_body = {"messages": [u("How do tides work on the Atlantic coast of France, and when are they highest?"),
                              a("They follow the moon.")]}
    title, _ = await chat(pipe, [u("### Task: Generate a title ...")], model="loom.moa", stream=False,
                          task="title_generation", task_body=task_body)
    assert json.loads(title) == {"title": "How do tides work on the Atlantic coast of France, and when…"}
    for task, expected in (("tags_generation", {"tags": []}), ("follow_up_generation", {"follow_ups": []}),
                           ("query_generation", {"queries": []})):
        answer, _ = await chat(pipe, [u("### Task")], model="loom.moa", task=task, task_body=task_body)
        assert json.loads(answer) == expected
    assert llm.requests() == []


async def test_non_streaming_requests_get_strings_only(loom, llm):
    llm.script({"tool_calls": [call("call_ns", "calculator", {"expression": "2+2"})]}, {"text": "Four."})
    text, items = await chat(make_pipe(loom), [u("2+2?")], stream=False, event_emitter=Emitter())
    assert items and all(isinstance(i, str) for i in items)
    assert text == block("call_ns", "calculator", "{&quot;expression&quot;: &quot;2+2&quot;}", "4") + "\nFour."


async def test_user_valves_reach_only_graphs_that_have_the_setting(loom, llm):
    user = a_user(moa_layers=0)
    llm.script({"text": "Directly."})
    text, _ = await chat(make_pipe(loom), [u("hi")], model="loom.moa", user=user)
    assert text == "Directly." and len(llm.requests()) == 1  # no proposer layer: the aggregator alone
    llm.script({"text": "Agent."})
    text, _ = await chat(make_pipe(loom), [u("hi")], model="loom.agent", user=user)  # agent has no `layers`
    assert text == "Agent."


async def test_moa_progress_and_proposer_answers(loom, llm):
    llm.script({"text": "Paris."}, {"text": "It is Paris."}, {"text": "Paris, France."}, {"text": "Paris."})
    emitter = Emitter()
    text, _ = await chat(make_pipe(loom, show_moa_proposals=True), [u("Capital of France?")], model="loom.moa",
                         event_emitter=emitter)
    assert text.startswith("<details>\n<summary>MoA layer 1: 3 proposer answers</summary>\n")
    assert text.count("**Proposer ") == 3 and "> It is Paris." in text
    assert text.endswith("</details>\n\nParis.")
    assert emitter.statuses()[-1]["description"].startswith("MoA: 3 of 3 proposers answered · ")


async def test_recalled_memories_are_sources(loom, llm):
    user = a_user()
    added = httpx.post(f"{loom.url}/memories", json={"content": "My dog is called Rex."},
                       headers={"authorization": f"Bearer {PROXY_KEY}", "x-loom-user": user["id"]})
    assert added.status_code == 201, added.text
    llm.script({"text": "Your dog is Rex."}, {"text": '{"memories": []}'})
    emitter = Emitter()
    text, _ = await chat(make_pipe(loom), [u("What is my dog called?")], model="loom.memory", user=user,
                         event_emitter=emitter)
    assert text == "Your dog is Rex."
    [source] = emitter.of("source")
    assert source["document"] == ["My dog is called Rex."] and source["source"]["name"] == \
        "Memory: My dog is called Rex."
    assert 0 < source["distances"][0] <= 1
