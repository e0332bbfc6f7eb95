"""The pipe's pure parts, without a server: OpenWebUI's chat history back into AG-UI messages, status lines (the
first at once, then rate-limited) and reasoning durations, whatever the machine's uptime."""

from __future__ import annotations

import asyncio

from loom.adapters.openwebui import history, render
from loom.adapters.openwebui.pipe import Pipe
from loom.adapters.openwebui.turn import Turn
from tests.openwebui_pipe_kit import Emitter, a, u


def test_history_ids_are_deterministic_and_blocks_parse_back():
    result = 'He said "<hi>" & left'
    content = ("Let me check.\n\n" + render.tool_call_block("c1", "echo", '{"q": "a \\"b\\" <c>"}', result)
               + "\nDone.\n\n" + render.error_text("loom is unreachable", "Cannot reach loom."))
    messages = [{"role": "system", "content": "Be brief."}, u("hi"), a(content), u("again")]
    converted = history.to_agui_messages(messages, "chat-1")
    assert converted == history.to_agui_messages(messages, "chat-1")  # the same history, the same ids
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert converted[2]["content"] == "Let me check."
    assert converted[2]["toolCalls"] == [{"id": "c1", "type": "function",
                                          "function": {"name": "echo", "arguments": '{"q": "a \\"b\\" <c>"}'}}]
    assert converted[3]["content"] == result and converted[3]["toolCallId"] == "c1"
    assert converted[4]["content"] == "Done."  # the pipe's error note is not conversation
    ids = [m["id"] for m in converted]
    assert len(set(ids)) == len(ids)
    edited = history.to_agui_messages([*messages[:3], u("something else")], "chat-1")
    assert [m["id"] for m in edited][:-1] == ids[:-1] and edited[-1]["id"] != ids[-1]
    assert history.to_agui_messages(messages, "chat-2")[0]["id"] != ids[0]


def test_images_are_content_parts_and_files_context_unless_already_in_the_chat():
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}}]}
    [converted] = history.to_agui_messages([image], "c")
    assert converted["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "data", "value": "iVBOR", "mimeType": "image/png"}},
        {"type": "image", "source": {"type": "url", "value": "https://x.test/cat.jpg"}}]
    files = [{"type": "file", "name": "notes.txt", "file": {"data": {"content": "The launch is on Friday."}}},
             {"type": "file", "name": "seen.txt", "file": {"data": {"content": "Already quoted text."}}},
             {"type": "file", "name": "photo.png", "file": {"data": {}}}]
    context = history.file_context(files, [u("<source>Already quoted text.</source> When?")])
    assert context == [{"description": "Text of the attached file notes.txt", "value": "The launch is on Friday."}]


class Clock:
    """A monotonic clock the test moves by hand; its default reading is a machine booted five seconds ago."""

    def __init__(self, now: float = 5.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_status_lines_are_rate_limited_and_always_end_done():
    async def run(interval: float) -> list[dict]:
        emitter = Emitter()
        status = render.StatusLine(emitter, interval=interval)
        for line in ("one", "two", "three"):
            await status.show(line)
        await status.show("important", important=True)
        await status.show("held back")
        await status.done("finished")
        await status.done("again")  # only once
        return emitter.statuses()

    assert asyncio.run(run(0)) == [{"description": d, "done": False} for d in ("one", "two", "three", "important",
                                                                               "held back")] \
        + [{"description": "finished", "done": True}]
    assert asyncio.run(run(3600)) == [{"description": "one", "done": False},
                                      {"description": "important", "done": False},
                                      {"description": "finished", "done": True}]


def test_the_first_status_line_goes_out_at_once_just_after_boot():
    async def run() -> tuple[list[dict], list[dict]]:
        emitter, clock = Emitter(), Clock()  # uptime (5 s) shorter than the interval (60 s)
        status = render.StatusLine(emitter, interval=60, clock=clock)
        await status.show("first")
        at_once = list(emitter.statuses())
        await status.show("too soon")
        clock.now += 60
        await status.show("a minute later")  # its turn has come: sent, and the held line with it replaced
        await status.done("finished")
        return at_once, emitter.statuses()

    at_once, statuses = asyncio.run(run())
    assert at_once == [{"description": "first", "done": False}]
    assert statuses == [{"description": "first", "done": False}, {"description": "a minute later", "done": False},
                        {"description": "finished", "done": True}]


def test_a_held_status_line_goes_out_without_another_event():
    async def run() -> list[dict]:
        emitter = Emitter()
        # The clock stands still, so "two" and "three" come too soon however slow the machine is.
        status = render.StatusLine(emitter, interval=0.05, clock=Clock())
        await status.show("one")
        await status.show("two")
        await status.show("three")  # replaces "two", which is never shown
        await status._timer  # the held line's turn comes (no new event needed)
        return emitter.statuses()

    assert asyncio.run(run()) == [{"description": "one", "done": False}, {"description": "three", "done": False}]


def test_reasoning_without_a_start_lasts_no_time_not_the_uptime():
    async def run() -> list[str]:
        turn = Turn(Pipe.Valves(), "agent", {"messages": []}, None, None, {})
        await turn._on_event({"type": "REASONING_MESSAGE_CONTENT", "messageId": "r", "delta": "Hmm."})
        return await turn._on_event({"type": "REASONING_END", "messageId": "r"})

    assert asyncio.run(run()) == [render.reasoning_block("Hmm.", 0)]
