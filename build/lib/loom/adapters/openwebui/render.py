"""What the user sees: OpenWebUI's own blocks for tool calls and reasoning, status lines, sources, errors.

Formats follow what OpenWebUI 0.12's frontend renders (the `<details type="tool_calls">` block is the one
OpenWebUI itself writes for native tool calls). The message content is append-only while it streams, so a
block is written once, when what it shows is complete; status events say what is happening meanwhile.
"""

import asyncio
import html
import json
import time
from collections.abc import Awaitable, Callable

Emitter = Callable[[dict], Awaitable[None]]

STEP_STATUS = {  # node names of loom's graphs; None: a step not worth a line of its own
    "call_model": "Thinking…",
    "dispatch_tools": "Running tools…",
    "begin_turn": None,
    "propose": None,
    "end_layer": None,
    "aggregate": "Writing the answer from the proposals…",
    "recall": "Recalling memories…",
    "autosave": "Checking what to remember…",
    "send": "Sending to the Letta agent…",
    "read": None,
    "await_approval": None,
}


def _attr(value: str) -> str:
    return html.escape(value.replace("\n", " "), quote=True)


def tool_call_block(call_id: str, name: str, arguments: str, result: str) -> str:
    """OpenWebUI's tool-call block: INPUT from `arguments` (JSON), OUTPUT from the body; ✕ for 'Error:' results."""
    try:  # one line of compact JSON: attribute values must not hold a newline
        arguments = json.dumps(json.loads(arguments or "{}"), ensure_ascii=False)
    except ValueError:
        pass
    return (f'<details type="tool_calls" done="true" id="{_attr(call_id)}" name="{_attr(name)}" '
            f'arguments="{_attr(arguments)}">\n<summary>Tool Executed</summary>\n{html.escape(result)}\n</details>\n')


def _quoted(text: str) -> str:
    return "\n".join(f"> {html.escape(line, quote=False)}" for line in text.strip().splitlines())


def reasoning_block(text: str, seconds: float) -> str:
    """OpenWebUI's reasoning block, as OpenWebUI itself writes it for a model's reasoning (its frontend shows
    "Thought for less than a second" for a duration of 0)."""
    n = round(seconds)
    return (f'<details type="reasoning" done="true" duration="{n}">\n<summary>Thought for {n} seconds</summary>\n'
            f"{_quoted(text)}\n</details>\n")


def proposals_block(layer: int, proposals: list[dict]) -> str:
    """A MoA layer's answers, collapsed: what the aggregator read before writing the reply below it."""
    parts = [f"<details>\n<summary>MoA layer {layer}: {len(proposals)} proposer answers</summary>\n"]
    for p in sorted(proposals, key=lambda p: p.get("index", 0)):
        seconds = f", {p['latency_ms'] / 1000:.1f} s" if "latency_ms" in p else ""
        parts.append(f"\n**Proposer {p.get('index', 0) + 1}** ({html.escape(str(p.get('model', '?')))}{seconds})\n\n"
                     f"{_quoted(str(p.get('answer', '')))}\n")
    return "".join(parts) + "</details>\n"


def memory_sources(memories: list[dict]) -> list[dict]:
    """`source` events, one per recalled memory: OpenWebUI lists them as sources under the answer."""
    events = []
    for memory in memories:
        content = str(memory.get("content", ""))
        label = content if len(content) <= 48 else content[:47] + "…"
        event = {"source": {"id": f"loom-memory-{memory.get('id', '')}", "name": f"Memory: {label}"},
                 "document": [content], "metadata": [{"source": "loom memory", "name": label}]}
        if isinstance(memory.get("score"), (int, float)):
            event["distances"] = [memory["score"]]
        events.append({"type": "source", "data": event})
    return events


def note_text(symbol: str, title: str, message: str) -> str:
    """A note of the pipe's own (an error, a declined approval): a quote headed by a symbol and a bold title.

    history.py recognizes this shape and leaves such notes out when the chat comes back.
    """
    lines = [f"> {symbol} **{html.escape(title, quote=False)}**"]
    lines += [f"> {html.escape(line, quote=False)}" for line in message.strip().splitlines()]
    return "\n".join(lines) + "\n"


def error_text(title: str, message: str) -> str:
    return note_text("⚠️", title, message)


def step_status(name: str) -> str | None:
    if name.startswith("layer "):
        return f"MoA {name}: asking the proposers…"
    if name in STEP_STATUS:
        return STEP_STATUS[name]
    return name.replace("_", " ").capitalize() + "…"


def moa_status(name: str, value: dict) -> tuple[str | None, bool]:
    """(status line, important) for a loom.moa.* event; important lines are never skipped by rate limiting."""
    layer = value.get("layer")
    if name == "loom.moa.proposer":
        who = f"MoA layer {layer}: proposer {value.get('index', 0) + 1} ({value.get('model', '?')})"
        status = value.get("status")
        if status == "started":
            return f"{who} is answering…", False
        if status == "finished":
            return f"{who} answered in {value.get('latency_ms', 0) / 1000:.1f} s", False
        return f"{who} failed: {value.get('reason', value.get('code', 'unknown error'))}", True
    if name == "loom.moa.layer":
        return (f"MoA layer {layer}: {value.get('succeeded', 0)} of {value.get('proposers', 0)} proposers "
                "answered"), False
    if name == "loom.moa.fallback":
        return str(value.get("reason") or "MoA fell back to fewer answers."), True
    return None, False


def separator(tail: str) -> str:
    """What keeps a block or a new message apart from what came before: one blank line."""
    if not tail or tail.endswith("\n\n"):
        return ""
    return "\n" if tail.endswith("\n") else "\n\n"


class Output:
    """The end of what was yielded so far: enough to start blocks on their own line and messages as paragraphs."""

    def __init__(self) -> None:
        self.tail = ""
        self.paragraph = False  # the next text starts a new message

    def _yield(self, text: str) -> str:
        self.tail = (self.tail + text)[-2:]
        return text

    def text(self, delta: str) -> str:
        prefix = separator(self.tail) if self.paragraph else ""
        self.paragraph = False
        return self._yield(prefix + delta)

    def block(self, block: str) -> str:
        self.paragraph = True
        return self._yield(separator(self.tail) + block)


class StatusLine:
    """`status` events: the first at once, then at most one per `interval` seconds, always ending with done: true.

    A line that comes too soon is held and sent when its time comes (a newer one replaces it), so a burst of
    progress (three proposers starting at once) shows its latest state without flooding the chat's status
    history. Without the last `done: true` OpenWebUI keeps the status shimmering forever.
    """

    def __init__(self, emit: Emitter | None, interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic):
        self.emit, self.interval, self.clock = emit, interval, clock
        self.last: float | None = None  # not 0.0: monotonic time starts near 0 at boot
        self.pending: str | None = None
        self.finished = False
        self._timer: asyncio.Future | None = None

    async def show(self, description: str | None, important: bool = False) -> None:
        """Show a line; `important` ones (failures, questions) go out at once, never replaced unseen."""
        if description is None or self.finished:
            return
        wait = 0.0 if self.last is None else self.interval - (self.clock() - self.last)
        if important or wait <= 0:
            await self._send(description, False)
            return
        self.pending = description
        if self._timer is None or self._timer.done():
            self._timer = asyncio.ensure_future(self._send_later(wait))

    async def _send_later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        if self.pending is not None and not self.finished:
            await self._send(self.pending, False)

    async def done(self, description: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.finished:
            self.finished = True
            await self._send(description, True)

    async def _send(self, description: str, done: bool) -> None:
        self.pending = None
        self.last = self.clock()
        await send(self.emit, {"type": "status", "data": {"description": description, "done": done}})


async def send(emit: Emitter | None, event: dict) -> None:
    """One event to OpenWebUI. A failing emitter (the browser went away) must not end the answer itself."""
    if emit is None:
        return
    try:
        await emit(event)
    except Exception:  # noqa: BLE001 — the text still reaches the chat through the stream
        pass
