"""OpenWebUI's chat history as AG-UI messages, with ids that come out the same every time the history is re-sent.

OpenWebUI sends the whole conversation with every request, as OpenAI-style {role, content} without ids. loom
matches re-sent history with the thread it stores by message id, so each id is derived from the chat, the
message's position, its role and its content: the same history gives the same ids (nothing is stored twice),
and a regenerated or edited message gets a new id, where loom forks the thread. (OpenWebUI keeps no id of
loom's answers, so the previous answer itself comes back under a derived id: loom replaces its stored copy
with the one OpenWebUI shows, and keeps the old one in the thread's checkpoint history.)

Earlier assistant turns come back with the pipe's own HTML inside. Tool-call blocks are turned back into the
assistant's tool call and the tool result they show; every other `<details>` block (reasoning, MoA proposals)
and the pipe's own notes (errors, declined approvals) are dropped, so the model never reads the pipe's markup
as conversation.
"""

import hashlib
import html
import json
import re

DETAILS_BLOCK = re.compile(r"<details\b([^>]*)>(.*?)</details>[ \t]*\n?", re.S | re.I)
ATTRIBUTE = re.compile(r'([\w-]+)="([^"]*)"')
SUMMARY = re.compile(r"^\s*<summary>.*?</summary>\n?", re.S | re.I)
PIPE_NOTE = re.compile(r"^> (?:⚠️|⏸) \*\*.*(?:\n> .*)*\n?", re.M)  # render.note_text: errors, declined calls
MAX_FILE_CHARS = 50_000  # per attached file put into the run's context (loom bounds the request size)


def message_id(chat_id: str, index: int, role: str, content: str, part: str = "") -> str:
    key = json.dumps([chat_id, index, role, content, part], ensure_ascii=False)
    return "owui-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def to_agui_messages(messages: list[dict], chat_id: str) -> list[dict]:
    """OpenWebUI `body["messages"]` → AG-UI messages (system, user with text and images, assistant, tool)."""
    out: list[dict] = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content") or ""
        key = _content_key(content)
        if role in ("system", "developer"):
            out.append({"id": message_id(chat_id, index, role, key), "role": "system", "content": _text(content)})
        elif role == "user":
            out.append({"id": message_id(chat_id, index, role, key), "role": "user", "content": _user_content(content)})
        elif role == "assistant":
            def make_id(part: str, index: int = index, key: str = key) -> str:
                return message_id(chat_id, index, "assistant", key, part)

            out += _assistant_turn(PIPE_NOTE.sub("", _text(content)), make_id)
        # Other roles (OpenWebUI's own tool messages) have no counterpart in a loom thread.
    return out


def strip_blocks(text: str) -> str:
    """The text of an assistant turn without any `<details>` block."""
    return DETAILS_BLOCK.sub("", text).strip()


def _assistant_turn(content: str, make_id) -> list[dict]:
    """One stored assistant turn → [assistant (text, tool calls), tool results..., assistant (text after)...]."""
    out: list[dict] = []
    text: list[str] = []
    calls: list[dict] = []
    results: list[dict] = []

    def flush() -> None:
        body = "".join(text).strip()
        if body or calls:
            message: dict = {"id": make_id(f"assistant-{len(out)}"), "role": "assistant"}
            if body:
                message["content"] = body
            if calls:
                message["toolCalls"] = list(calls)
            out.append(message)
            out.extend(results)
        text.clear()
        calls.clear()
        results.clear()

    position = 0
    for block in DETAILS_BLOCK.finditer(content):
        before = content[position:block.start()]
        position = block.end()
        if before.strip():
            if calls:  # text after tool calls is the model's next message
                flush()
            text.append(before)
        attributes = {k: html.unescape(v) for k, v in ATTRIBUTE.findall(block.group(1))}
        if attributes.get("type") != "tool_calls" or attributes.get("done") != "true":
            continue  # reasoning, MoA proposals, anything unfinished: display only
        call_id, name = attributes.get("id"), attributes.get("name")
        if not call_id or not name:
            continue
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": name, "arguments": _json_or_empty(attributes.get("arguments", ""))}})
        result = html.unescape(SUMMARY.sub("", block.group(2), count=1)).strip("\n")
        results.append({"id": make_id(f"tool-{call_id}"), "role": "tool", "toolCallId": call_id, "content": result})
    rest = content[position:]
    if rest.strip():
        if calls:
            flush()
        text.append(rest)
    flush()
    return out


def _json_or_empty(arguments: str) -> str:
    try:
        json.loads(arguments)
        return arguments
    except ValueError:
        return "{}"  # loom refuses a tool call whose arguments are not JSON


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def _content_key(content) -> str:
    """What a message's id is derived from: its text, and the start of each image (data URLs are large)."""
    if isinstance(content, str):
        return content.strip()
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            url = _image_url(part)
            parts.append(f"[image {len(url)} {url[:256]}]")
        elif isinstance(part, dict):
            parts.append(str(part.get("text", "")))
    return "\n".join(parts).strip()


def _image_url(part: dict) -> str:
    image = part.get("image_url")
    return image.get("url", "") if isinstance(image, dict) else str(image or "")


def _user_content(content) -> str | list[dict]:
    """Text stays a string; with images, AG-UI content parts (text, and image with a data or url source)."""
    if isinstance(content, str):
        return content
    parts: list[dict] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            parts.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url" and (url := _image_url(part)):
            if url.startswith("data:"):
                header, _, data = url.partition(",")
                mime = header[5:].split(";")[0] or "image/png"
                parts.append({"type": "image", "source": {"type": "data", "value": data, "mimeType": mime}})
            else:
                parts.append({"type": "image", "source": {"type": "url", "value": url}})
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def file_context(files: list | None, messages: list[dict]) -> list[dict]:
    """Attached files' extracted text as AG-UI context entries, unless OpenWebUI already put it in the chat.

    OpenWebUI's own file handling usually adds the text (or retrieved parts of it) to the conversation before
    the pipe is called; only files whose text appears nowhere in the messages are added here.
    """
    seen = "\n".join(_text(m.get("content") or "") for m in messages)
    entries = []
    for item in files or []:
        if not isinstance(item, dict):
            continue
        file = item.get("file") if isinstance(item.get("file"), dict) else item
        text = str((file.get("data") or {}).get("content") or "")
        if not text.strip() or text.strip()[:200] in seen:
            continue
        name = item.get("name") or file.get("filename") or (file.get("meta") or {}).get("name") or "a file"
        if len(text) > MAX_FILE_CHARS:
            text = text[:MAX_FILE_CHARS] + f"\n[… {len(text) - MAX_FILE_CHARS} more characters not included]"
        entries.append({"description": f"Text of the attached file {name}", "value": text})
    return entries


def task_answer(task: str, task_body: dict | None) -> str:
    """The answer to an OpenWebUI background task, made without a model (see Pipe.pipe for why).

    Titles are the start of the chat's first user message; tags, follow-ups and queries are left empty, in the
    JSON shapes OpenWebUI parses. An empty answer makes OpenWebUI use its own fallback.
    """
    task = str(task)
    if "title" in task:
        messages = (task_body or {}).get("messages") or []
        first = next((strip_blocks(_text(m.get("content") or "")) for m in messages if m.get("role") == "user"), "")
        line = first.strip().splitlines()[0] if first.strip() else ""
        if not line:
            return ""
        title = line if len(line) <= 60 else line[:60].rsplit(" ", 1)[0] + "…"
        return json.dumps({"title": title}, ensure_ascii=False)
    for word, key in (("tags", "tags"), ("follow_up", "follow_ups"), ("quer", "queries")):
        if word in task:
            return json.dumps({key: []})
    if "autocomplete" in task:
        return json.dumps({"text": ""})
    return ""


def task_messages(body: dict | None) -> list[dict]:
    """The prompt OpenWebUI built for a background task, as plain-text messages for loom's POST /tasks."""
    return [{"role": m["role"], "content": strip_blocks(_text(m.get("content") or ""))}
            for m in (body or {}).get("messages") or []
            if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")]
