"""loom inside a real OpenWebUI, driven in headless Chromium as a person uses it (tests/openwebui_browser.py).

One OpenWebUI (tests/openwebui_rig.py) and one browser serve the whole module. Each test opens a new chat with a
loom model, types a message, presses send and asserts on what the page shows: the tool-call block with its
input and output (a backend tool, and an OpenWebUI workspace tool), MoA's per-proposer status lines, recalled
memories as a source, an error and its toast.
Every test saves a screenshot under the pytest tmp dir (`browser-shots/`).

Needs Debian's `chromium` (`apt-get install -y chromium`); without it these tests skip, unless
LOOM_TEST_REQUIRE_BROWSER=1 says the run needs them (CI), where a missing browser fails.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from tests.conftest import LoomServer
from tests.openwebui_browser import LAST_ANSWER, Browser, ChatPage, chromium_missing
from tests.openwebui_rig import OpenWebUI, install_loom_pipe
from tests.test_openwebui_e2e import WEATHER_TOOL

PROXY_KEY = "browser-proxy-key"
TASK_MODEL = "task-model"  # titles and follow-ups: the scripted LLM answers them from their own queue
pytestmark = pytest.mark.timeout(900)  # the first test pays for OpenWebUI's start (15-73 s on 2 cores)


@pytest.fixture(scope="module", autouse=True)
def _chromium():
    if why := chromium_missing():
        if os.environ.get("LOOM_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why}, and LOOM_TEST_REQUIRE_BROWSER=1 says the tests need one", pytrace=False)
        pytest.skip(f"{why}; LOOM_TEST_REQUIRE_BROWSER=1 makes this a failure")


@pytest.fixture(scope="module")
def loom(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("browser-loom"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_API_KEYS=f"{PROXY_KEY}=proxy", LOOM_MEMORY_EMBEDDINGS_URL=llm.url,
                        LOOM_MEMORY_EMBEDDINGS_MODEL="hashed-bow", LOOM_TASK_MODEL=TASK_MODEL).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def openwebui(loom, tmp_path_factory):
    server = OpenWebUI(tmp_path_factory.mktemp("browser-openwebui"))
    try:
        server.start()
        install_loom_pipe(server, loom.url, PROXY_KEY)
        server.create_tool("weather", WEATHER_TOOL, "Weather")
        server.create_model("weather-agent", "Weather agent", "loom.agent", ["weather"])
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def chat_page(openwebui, tmp_path_factory):
    browser = await Browser(tmp_path_factory.mktemp("chromium-profile")).start()
    try:
        page = ChatPage(browser.page, openwebui.url, openwebui.token)
        await page.login()
        yield page
    finally:
        await browser.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("browser-shots")


def call(call_id: str, name: str, args: dict) -> dict:
    return {"id": call_id, "name": name, "arguments": args}


async def opened_block(chat_page: ChatPage, tool: str, answer: str) -> list[str]:
    """Opens the answer's block of `tool` and returns its lines as the page shows them, up to the answer text."""
    await chat_page.click(f"View Result from {tool}", "div, button, span")
    await chat_page.page.wait_for("document.body.innerText.includes('OUTPUT')", 10, what="the open block")
    block = (await chat_page.answer_text()).split(f"View Result from {tool}", 1)[1].split(answer)[0]
    return [line.strip() for line in block.split("\n") if line.strip()]


async def test_a_backend_tool_call_shows_as_a_block_with_its_input_and_output(chat_page, llm, shots):
    llm.script({"tool_calls": [call("call_calc", "calculator", {"expression": "23*19"})]},
               {"text": "23 × 19 is 437."})
    await chat_page.new_chat("loom.agent")
    await chat_page.send("What is 23*19?")
    answer = await chat_page.wait_answer_done()
    assert "View Result from calculator" in answer
    assert "23 × 19 is 437." in answer and "1 tool call · " in answer
    assert "OUTPUT" not in answer  # the block starts closed
    assert await opened_block(chat_page, "calculator", "23 × 19 is 437.") == [
        "INPUT", "expression", "23*19", "OUTPUT", "437"]
    await chat_page.screenshot(shots / "tool-call.png")


async def test_a_chat_tool_runs_in_openwebui_and_shows_its_input_and_output(chat_page, openwebui, llm, shots):
    """A workspace tool that is on in the chat (the "Weather agent" model, loom's agent with the tool on by
    default): the agent calls it, OpenWebUI runs it with the user's valve, and the page shows its block the
    way it shows a backend tool's."""
    openwebui.set_tool_user_valves("weather", {"unit": "C"})
    llm.script({"tool_calls": [call("call_w", "get_weather", {"city": "Lyon"})]}, {"text": "It is 21°C in Lyon."})
    await chat_page.new_chat("weather-agent", shown="Weather agent")
    # The page fetches the workspace tools, then switches the model's default ones on; the wrench counts them.
    await chat_page.page.wait_for("document.querySelector('button[aria-label=\"Available Tools\"]')"
                                  "?.innerText.trim() === '1'", 30, what="the weather tool switched on")
    await chat_page.send("Weather in Lyon?")
    answer = await chat_page.wait_answer_done()
    assert "View Result from get_weather" in answer and "It is 21°C in Lyon." in answer, answer
    assert await opened_block(chat_page, "get_weather", "It is 21°C in Lyon.") == [
        "INPUT", "city", "Lyon", "OUTPUT", "Lyon: 21°C"]
    offered = [t["function"]["name"] for t in llm.requests()[0]["body"]["tools"]]
    assert "get_weather" in offered  # the tool came from OpenWebUI, through the pipe, to the model
    assert llm.requests()[1]["body"]["messages"][-1] == {
        "role": "tool", "tool_call_id": "call_w", "content": "Lyon: 21°C"}  # what OpenWebUI's tool returned
    await chat_page.screenshot(shots / "chat-tool.png")


async def test_moa_shows_each_proposer_in_the_status_history(chat_page, llm, shots):
    # Each proposer takes its time, so the rate-limited status line shows every one of them in turn.
    llm.script({"text": "Paris.", "ttft_ms": 400}, {"text": "It is Paris.", "ttft_ms": 900},
               {"text": "Paris, France.", "ttft_ms": 1400}, {"text": "The capital of France is Paris."})
    await chat_page.new_chat("loom.moa")
    await chat_page.send("Capital of France?")
    answer = await chat_page.wait_answer_done()
    assert "MoA: 3 of 3 proposers answered · " in answer and "The capital of France is Paris." in answer
    await chat_page.click("Toggle status history")
    await chat_page.page.wait_for("document.body.innerText.includes('Connecting to loom')", 10,
                                  what="the open status history")
    history = await chat_page.answer_text()
    answered = sorted(line for line in history.splitlines() if " answered in " in line)
    assert [line.split(" answered in ")[0] for line in answered] == [
        f"MoA layer 1: proposer {n} (scripted)" for n in (1, 2, 3)], history
    await chat_page.screenshot(shots / "moa-status.png")


async def test_recalled_memories_show_as_sources(chat_page, openwebui, loom, llm, shots):
    added = httpx.post(f"{loom.url}/memories", json={"content": "My dog is called Rex."}, timeout=30,
                       headers={"authorization": f"Bearer {PROXY_KEY}", "x-loom-user": openwebui.user["id"]})
    assert added.status_code == 201, added.text
    llm.script({"text": "Your dog is Rex."}, {"text": '{"memories": []}'})
    await chat_page.new_chat("loom.memory")
    await chat_page.send("What is my dog called?")
    answer = await chat_page.wait_answer_done()
    assert "Your dog is Rex." in answer and "1 Source" in answer
    await chat_page.click("1 Source", "button, div, span")
    await chat_page.page.wait_for("document.body.innerText.includes('1\\nMy dog is called Rex.')", 10,
                                  what="the recalled memory listed under the answer")
    await chat_page.screenshot(shots / "memory-sources.png")
    answering = llm.requests()[0]
    assert "My dog is called Rex." in str(answering["body"]["messages"])  # what the page shows, the model saw


async def test_a_failing_model_shows_an_error_and_a_toast(chat_page, llm, shots):
    failure = {"status": 500, "error_message": "the model fell over"}
    llm.script(failure, failure, failure)  # loom's retries too
    await chat_page.new_chat("loom.agent")
    await chat_page.send("Hello?")
    toast = await chat_page.page.wait_for(
        "[...document.querySelectorAll('[data-sonner-toast]')].map(t => t.innerText).join('\\n')", 30,
        what="a toast")
    answer = await chat_page.wait_answer_done()
    assert "The model server answered HTTP 500: the model fell over" in answer, answer
    assert "Failed: The run failed" in answer
    assert "The run failed" in toast and "HTTP 500" in toast, toast
    await chat_page.screenshot(shots / "error.png")


@pytest.fixture
def confirm_calculator(openwebui, loom):
    """The pipe's confirm_tools valve names the calculator, for one test."""
    valves = {"loom_url": loom.url, "api_key": PROXY_KEY}
    openwebui.call("POST", "/api/v1/functions/id/loom/valves/update", {**valves, "confirm_tools": "calculator"})
    yield
    openwebui.call("POST", "/api/v1/functions/id/loom/valves/update", valves)


@pytest.mark.parametrize("button", ["Confirm", "Cancel"])
async def test_a_tool_in_confirm_tools_opens_the_confirmation_dialog(chat_page, llm, shots, confirm_calculator,
                                                                     button):
    llm.script({"tool_calls": [call("call_calc", "calculator", {"expression": "6*7"})]},
               {"text": "It is 42." if button == "Confirm" else "I did not calculate it."})
    await chat_page.new_chat("loom.agent")
    await chat_page.send("What is 6*7?")
    await chat_page.wait_text("Allow calculator?", 30)
    await chat_page.wait_text('Allow calculator({"expression": "6*7"})?', 5)
    if button == "Confirm":
        await chat_page.screenshot(shots / "confirmation-dialog.png")
    await chat_page.click(button)
    answer = await chat_page.wait_answer_done()
    told = llm.requests()[1]["body"]["messages"][-1]
    if button == "Confirm":
        assert told == {"role": "tool", "tool_call_id": "call_calc", "content": "42"}
        assert "View Result from calculator" in answer and "It is 42." in answer
    else:
        assert told["role"] == "tool" and told["content"] == "The user rejected this tool call."
        assert "I did not calculate it." in answer
    assert "Allow calculator?" not in await chat_page.text()  # the dialog closed
    await chat_page.screenshot(shots / f"confirmation-{button.lower()}.png")


async def test_stop_mid_answer_cancels_the_loom_run_and_the_chat_goes_on(chat_page, loom, llm, shots):
    words = " ".join(f"word{n}" for n in range(200))
    llm.script({"text": words, "token_delay_ms": 100}, {"text": "Still here."})
    await chat_page.new_chat("loom.agent")
    await chat_page.send("Tell me a long story.")
    await chat_page.wait_text("word3", 30)
    await chat_page.click("Stop")
    await chat_page.screenshot(shots / "stopped.png")
    stopped = await asyncio.to_thread(llm.wait_request, lambda r: r["ended_at"] is not None, 20)
    assert stopped["outcome"] == "disconnected", stopped  # the model request was cancelled, not finished
    for _ in range(100):  # the run's log line is written once its task has unwound
        if "outcome=cancelled" in loom.log():
            break
        await asyncio.sleep(0.1)
    [run_line] = [line for line in loom.log().splitlines() if "outcome=" in line and "graph=agent" in line][-1:]
    assert "outcome=cancelled" in run_line, run_line
    shown = await chat_page.answer_text()
    assert "word3" in shown and "word199" not in shown
    await chat_page.send("Are you there?")  # the chat stays usable
    await chat_page.page.wait_for(f"({LAST_ANSWER} || {{innerText: ''}}).innerText.includes('Still here.')", 30,
                                  what="the next answer")
    assert [m["content"] for m in llm.requests()[-1]["body"]["messages"] if m["role"] == "user"][-1] == \
        "Are you there?"


def model_saw(request: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["body"]["messages"] if m["role"] in ("user", "assistant")]


async def test_regenerate_and_edit_show_the_new_answer_and_fork_the_thread(chat_page, llm, shots):
    llm.script({"text": "Bonjour."}, {"text": "Au revoir."}, {"text": "Adieu."}, {"text": "Hola."})
    await chat_page.new_chat("loom.agent")
    await chat_page.send("Say hello in French.")
    assert "Bonjour." in await chat_page.wait_answer_done()
    await chat_page.send("Now goodbye.")
    await chat_page.page.wait_for(f"({LAST_ANSWER} || {{innerText: ''}}).innerText.includes('Au revoir.')", 30,
                                  what="the second answer")
    await chat_page.wait_answer_done()

    await chat_page.click("Regenerate")
    await chat_page.click("Try Again", "button, div, [role=menuitem]")
    await chat_page.page.wait_for(f"({LAST_ANSWER} || {{innerText: ''}}).innerText.includes('Adieu.')", 30,
                                  what="the regenerated answer")
    regenerated = await chat_page.wait_answer_done()
    assert "Au revoir." not in regenerated and "2/2" in regenerated  # the new answer, the old one a page back
    assert model_saw(llm.requests()[2]) == [("user", "Say hello in French."), ("assistant", "Bonjour."),
                                            ("user", "Now goodbye.")]  # not the answer it replaces
    await chat_page.screenshot(shots / "regenerated.png")

    await chat_page.click("Edit", within="document.querySelector('.user-message')")
    editor = "document.querySelector('.user-message textarea[id^=\"message-edit-\"]')"
    await chat_page.page.wait_for(f"!!{editor}", 10, what="the message editor")
    await chat_page.page.js(f"{editor}.focus(); {editor}.select()")
    await chat_page.page.send("Input.insertText", text="Say hello in Spanish.")
    await chat_page.page.js("document.querySelector('#confirm-edit-message-button').click()")
    await chat_page.page.wait_for(f"({LAST_ANSWER} || {{innerText: ''}}).innerText.includes('Hola.')", 30,
                                  what="the answer to the edited message")
    page_text = await chat_page.text()
    assert "Say hello in Spanish." in page_text and "Now goodbye." not in page_text  # the edited branch
    assert model_saw(llm.requests()[3]) == [("user", "Say hello in Spanish.")]  # the thread forked at turn 1
    await chat_page.screenshot(shots / "edited.png")


@pytest.fixture
def background_tasks(openwebui):
    """Switches on the OpenWebUI background tasks a test names (the rig switches them off), for that test."""
    config = openwebui.call("GET", "/api/v1/tasks/config")

    def switch_on(*settings: str) -> None:
        openwebui.call("POST", "/api/v1/tasks/config/update", {**config, **{name: True for name in settings}})

    yield switch_on
    openwebui.call("POST", "/api/v1/tasks/config/update", config)


async def test_the_chat_title_comes_from_the_task_model(chat_page, llm, shots, background_tasks):
    background_tasks("ENABLE_TITLE_GENERATION")
    llm.script({"text": "Tides follow the moon."})
    llm.script({"text": '{"title": "🌊 Tides and the moon"}'}, model=TASK_MODEL)
    await chat_page.new_chat("loom.agent")
    await chat_page.send("How do tides work?")
    assert "Tides follow the moon." in await chat_page.wait_answer_done()
    await chat_page.wait_text("🌊 Tides and the moon", 30)  # the chat's title, above the chat and in the list
    # OpenWebUI may ask for the title while the answer still streams: the two models' queues keep them apart.
    [title] = [r for r in llm.requests() if r["body"]["model"] == TASK_MODEL]
    assert len(llm.requests()) == 2
    assert title["body"].get("stream") is not True and not title["body"].get("tools")  # one plain call
    await chat_page.screenshot(shots / "title.png")


async def test_follow_up_chips_come_from_one_model_call(chat_page, llm, shots, background_tasks):
    background_tasks("ENABLE_FOLLOW_UP_GENERATION")
    llm.script({"text": "Tides follow the moon."})
    llm.script({"text": '{"follow_ups": ["Why does the moon pull the sea?", "When are spring tides?"]}'},
               model=TASK_MODEL)
    await chat_page.new_chat("loom.agent")
    await chat_page.send("How do tides work?")
    assert "Tides follow the moon." in await chat_page.wait_answer_done()
    chip = "button[aria-label=\"Follow up: When are spring tides?\"]"
    await chat_page.page.wait_for(f"!!document.querySelector('{chip}')", 30, what="the follow-up chips")
    assert "Why does the moon pull the sea?" in await chat_page.answer_text()
    await chat_page.screenshot(shots / "follow-ups.png")
    answer, follow_up = llm.requests()
    assert answer["body"].get("stream") is True
    assert follow_up["body"].get("stream") is not True and not follow_up["body"].get("tools")  # one plain call
    [(role, prompt)] = [(m["role"], m["content"]) for m in follow_up["body"]["messages"]]
    assert role == "user" and "ASSISTANT: Tides follow the moon.\n</chat_history>" in prompt  # OpenWebUI's prompt
    llm.script({"text": "Around new and full moon."})
    await chat_page.page.js(f"document.querySelector('{chip}').click()")  # a chip asks it as the next message
    await chat_page.page.wait_for(f"({LAST_ANSWER} || {{innerText: ''}}).innerText.includes('Around new and full "
                                  "moon.')", 30, what="the answer to the follow-up")
    assert [m["content"] for m in llm.requests()[2]["body"]["messages"] if m["role"] == "user"][-1] == \
        "When are spring tides?"
