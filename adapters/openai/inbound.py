"""A Chat Completions request -> the RunAgentInput of one loom run. Pure: the server supplies the thread.

OpenAI messages carry no ids, and loom reconciles re-sent history with the stored thread by id. Each id is
derived from the thread, the message's position, its role and its content (as the OpenWebUI pipe does): the
same history gives the same ids (nothing is stored twice), and an edited or regenerated turn gets new ids,
where loom forks the thread.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from loom.adapters.openai import confirm
from loom.adapters.openwebui.history import _assistant_turn, _content_key, _text, _user_content, message_id
from loom.graphs.text_checks import MAX_ID_LENGTH, valid_id

# Sampling parameters, by the runtime-context field that takes them (when the graph's context has it).
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "max_completion_tokens": "max_tokens",
            "max_tokens": "max_tokens", "stop": "stop", "seed": "seed"}
EXTENSION_KEYS = frozenset({"context", "progress"})
PROGRESS_HEADER = "x-loom-progress"
THREAD_HEADER = "x-loom-thread"
TASK_HEADER = "x-loom-task"
OPENWEBUI_CHAT_HEADER = "x-openwebui-chat-id"  # sent with ENABLE_FORWARD_USER_INFO_HEADERS
OPENWEBUI_USER_HEADER = "x-openwebui-user-id"


class RequestError(ValueError):
    """A request OpenAI's API would refuse with 400 (or `status`); `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


@dataclass
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    progress: bool  # render server-side tool calls and MoA proposals into the content
    run: dict  # RunAgentInput in wire form
    client_tools: frozenset[str]
    ignored: list[str] = field(default_factory=list)  # sampling parameters this graph has no setting for


def thread_hint(headers: dict[str, str], graph: str, body: dict) -> str | None:
    """The loom thread a request continues: `X-Loom-Thread` as is, or an OpenWebUI chat (the pipe's thread).

    OpenWebUI sends its background tasks (titles, tags, follow-ups, queries) with the chat's id too; run on the
    chat's thread, each would fork it. They run on a fresh thread: those that name themselves (`X-Loom-Task`,
    e.g. a connection header `{"X-Loom-Task": "{{TASK}}"}`), and those with OpenWebUI's default task prompts.
    """
    if headers.get(TASK_HEADER, "").strip():
        return None
    if thread := headers.get(THREAD_HEADER, "").strip():
        return _checked(thread, THREAD_HEADER)
    if (chat := headers.get(OPENWEBUI_CHAT_HEADER, "").strip()) and not _openwebui_task(body.get("messages")):
        return _checked(f"openwebui-{chat}-{graph}", OPENWEBUI_CHAT_HEADER)
    return None


def _checked(thread_id: str, header: str) -> str:
    """A thread id as runs take them (1-256 printable characters), checked before anything reads the thread."""
    if not valid_id(thread_id):
        raise RequestError(f"{header}: a thread id is 1 to {MAX_ID_LENGTH} printable characters", header.lower(),
                           "invalid_id")
    return thread_id


def _openwebui_task(messages: Any) -> bool:
    """A single user message in the shape of OpenWebUI's default task prompts."""
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        return False
    text = _text(messages[0].get("content") or "")
    return messages[0].get("role") == "user" and text.startswith("### Task:") and "<chat_history>" in text


def named_user(headers: dict[str, str], body: dict) -> str | None:
    """The end user a proxy names: OpenWebUI's forwarded user header wins over the request's `user` field
    (OpenWebUI sets the header from its own login; `user` is whatever the client wrote)."""
    if user := headers.get(OPENWEBUI_USER_HEADER, "").strip():
        return user
    user = body.get("user")
    return str(user) if isinstance(user, (str, int)) and str(user) else None


def model_of(body: Any) -> str:
    if not isinstance(body, dict):
        raise RequestError("The body must be a JSON object (a Chat Completions request).")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: required, the name of a loom graph (GET /v1/models lists them).", "model")
    return model


def chat_request(body: dict, *, thread_id: str | None, context_fields: frozenset[str], headers: dict[str, str],
                 max_messages: int, max_tools: int) -> ChatRequest:
    """Translate a validated-as-JSON request. `thread_id` is the caller's thread hint (None: a fresh thread)."""
    model = model_of(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: a non-empty list of messages is required.", "messages")
    if len(messages) > max_messages:
        raise RequestError(f"messages: {len(messages)} items exceed the limit of {max_messages} "
                           "(LOOM_MAX_MESSAGES).", "messages", "too_many_messages")
    if body.get("n") not in (None, 1):
        raise RequestError("n: a loom run gives one answer; only n=1 is supported.", "n")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise RequestError("response_format: loom graphs answer in text; only {\"type\": \"text\"} is supported.",
                           "response_format")
    extension = _extension(body.get("loom"))
    overrides, ignored = _sampling(body, context_fields)
    context = extension.get("context") or {}
    for key in context:
        if key not in context_fields:
            allowed = ", ".join(sorted(context_fields))
            raise RequestError(f"loom.context.{key}: unknown setting (allowed: {allowed})", f"loom.context.{key}",
                               "invalid_context")
    overrides.update(context)  # explicit loom settings win over the sampling parameters
    tools = _tools(body.get("tools"), body.get("tool_choice"), max_tools)
    resume, confirm_thread = _confirmations(messages)
    if confirm_thread is not None and thread_id is not None and confirm_thread != thread_id:
        raise RequestError("messages: the loom_confirm result belongs to another thread than the thread header.",
                           "messages", "thread_mismatch")
    thread_id = thread_id or confirm_thread or f"openai-{uuid.uuid4()}"
    run: dict = {"threadId": thread_id, "runId": str(uuid.uuid4()), "state": {}, "tools": tools, "context": [],
                 "messages": agui_messages(messages, thread_id), "forwardedProps": {"context": overrides}}
    if resume:
        run["resume"] = resume
    stream_options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    progress_header = headers.get(PROGRESS_HEADER, "").strip().lower() in ("1", "true", "yes", "on")
    return ChatRequest(model=model, stream=bool(body.get("stream")),
                       include_usage=bool(stream_options.get("include_usage")),
                       progress=bool(extension.get("progress")) or progress_header, run=run,
                       client_tools=frozenset(t["name"] for t in tools), ignored=ignored)


def _extension(value: Any) -> dict:
    """The `loom` extension field (`extra_body={"loom": {...}}` in the openai SDK)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError("loom: must be an object ({\"context\": {...}, \"progress\": true}).", "loom")
    for key in value:
        if key not in EXTENSION_KEYS:
            raise RequestError(f"loom.{key}: unknown field (allowed: {', '.join(sorted(EXTENSION_KEYS))})",
                               f"loom.{key}")
    if not isinstance(value.get("context", {}), dict):
        raise RequestError("loom.context: must be an object of runtime settings.", "loom.context")
    return value


def _sampling(body: dict, context_fields: frozenset[str]) -> tuple[dict, list[str]]:
    """Sampling parameters as context overrides where the graph has the setting; the others are reported."""
    overrides: dict = {}
    ignored: list[str] = []
    for param, setting in SAMPLING.items():
        value = body.get(param)
        if value is None:
            continue
        if setting not in context_fields:
            ignored.append(param)
            continue
        if param == "stop":
            value = [value] if isinstance(value, str) else value
        if param == "max_tokens" and "max_completion_tokens" in body:
            continue  # the newer name wins when both are sent
        overrides[setting] = value
    return overrides, ignored


def _tools(tools: Any, tool_choice: Any, max_tools: int) -> list[dict]:
    """The caller's function tools as AG-UI frontend tools (`tool_choice: "none"` offers none)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise RequestError("tools: must be a list of {\"type\": \"function\", \"function\": {...}}.", "tools")
    if len(tools) > max_tools:
        raise RequestError(f"tools: {len(tools)} items exceed the limit of {max_tools} (LOOM_MAX_TOOLS).", "tools",
                           "too_many_tools")
    if tool_choice not in (None, "auto", "none"):
        raise RequestError("tool_choice: loom graphs decide when to call a tool; only \"auto\" and \"none\" are "
                           "supported.", "tool_choice")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function" or \
                not isinstance(function.get("name"), str):
            raise RequestError(f"tools[{i}]: must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.",
                               f"tools[{i}]")
        if function["name"] == confirm.TOOL_NAME:
            raise RequestError(f"tools[{i}].function.name: {confirm.TOOL_NAME!r} is reserved by loom.",
                               f"tools[{i}].function.name")
        out.append({"name": function["name"], "description": function.get("description") or "",
                    "parameters": function.get("parameters") or {"type": "object", "properties": {}}})
    return [] if tool_choice == "none" else out


def _confirmations(messages: list) -> tuple[list[dict], str | None]:
    """Resume entries for `loom_confirm` results that end the history, and the thread their ids name."""
    resume: list[dict] = []
    thread: str | None = None
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        parsed = confirm.parse_call_id(str(message.get("tool_call_id") or ""))
        if parsed is None:
            continue
        thread, interrupt_id = parsed
        resume.append({"interruptId": interrupt_id, **confirm.decision(_text(message.get("content") or ""))})
    return resume[::-1], thread


def agui_messages(messages: list, thread_id: str) -> list[dict]:
    """OpenAI messages -> AG-UI messages with derived ids; `loom_confirm` calls and results are left out."""
    out: list[dict] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where}: must be an object with a role.", where)
        role, content = message.get("role"), message.get("content") or ""
        if not isinstance(content, (str, list)):
            raise RequestError(f"{where}.content: must be a string or a list of content parts.", f"{where}.content")
        key = _content_key(content)
        if role in ("system", "developer"):
            out.append({"id": message_id(thread_id, index, role, key), "role": "system", "content": _text(content)})
        elif role == "user":
            out.append({"id": message_id(thread_id, index, role, key), "role": "user",
                        "content": _user_content(content)})
        elif role == "assistant":
            out += _assistant(message, _text(content), thread_id, index, where)
        elif role == "tool":
            call = str(message.get("tool_call_id") or "")
            if not call:
                raise RequestError(f"{where}.tool_call_id: required for a tool message.", f"{where}.tool_call_id")
            if confirm.parse_call_id(call) is None:
                out.append({"id": message_id(thread_id, index, role, key, call), "role": "tool", "toolCallId": call,
                            "content": _text(content)})
        else:
            raise RequestError(f"{where}.role: {role!r} is not supported (system, developer, user, assistant, "
                               "tool).", f"{where}.role")
    return out


def _assistant(message: dict, text: str, thread_id: str, index: int, where: str) -> list[dict]:
    """One assistant turn: its text (with any rendered tool-call blocks turned back into calls and results),
    then the client tool calls it made."""
    calls = []
    for j, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not call.get("id") or not isinstance(function.get("name"), str):
            raise RequestError(f"{where}.tool_calls[{j}]: must have an id and a function name.",
                               f"{where}.tool_calls[{j}]")
        if function["name"] != confirm.TOOL_NAME:
            calls.append({"id": str(call["id"]), "type": "function",
                          "function": {"name": function["name"], "arguments": function.get("arguments") or "{}"}})
    key = text + "".join(c["id"] for c in calls)

    def make_id(part: str) -> str:
        return message_id(thread_id, index, "assistant", key, part)

    turn = _assistant_turn(text, make_id)
    if calls:
        last = turn[-1] if turn else None
        if last is not None and last["role"] == "assistant" and "toolCalls" not in last:
            last["toolCalls"] = calls
        else:
            turn.append({"id": make_id("calls"), "role": "assistant", "toolCalls": calls})
    return turn
