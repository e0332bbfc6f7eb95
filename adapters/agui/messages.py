"""AG-UI messages <-> LangChain messages. Ids are kept on both sides: they are how threads reconcile."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ag_ui.core import types as agui
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage


class MessageError(ValueError):
    """A message the graph cannot take; `field` is the JSON path of the offending value."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


# --------------------------------------------------------------------------------------- AG-UI -> LangChain


def _content_part(part: Any, where: str) -> dict:
    kind = getattr(part, "type", None)
    if kind == "text":
        return {"type": "text", "text": part.text}
    source = getattr(part, "source", None)
    if kind == "image" and source is not None:
        if source.type == "url":
            return {"type": "image_url", "image_url": {"url": source.value}}
        if source.type == "data":
            return {"type": "image_url", "image_url": {"url": f"data:{source.mime_type};base64,{source.value}"}}
    if kind == "document" and source is not None and source.type == "data" and \
            (source.mime_type or "").startswith("text/"):
        try:
            data = base64.b64decode(source.value, validate=True)
        except (binascii.Error, ValueError):
            raise MessageError(f"{where}.source.value", "is not valid base64") from None
        return {"type": "text", "text": data.decode("utf-8", "replace")}
    raise MessageError(where, f"content part of type {kind!r} is not supported here (text, image, text documents)")


def _content(content: Any, where: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    return [_content_part(part, f"{where}[{i}]") for i, part in enumerate(content)]


def to_langchain(messages: list[agui.Message]) -> list[BaseMessage]:
    """Convert client messages; `activity` and `reasoning` messages are UI-only and not sent to models."""
    out: list[BaseMessage] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        match m.role:
            case "user":
                out.append(HumanMessage(_content(m.content, f"{where}.content"), id=m.id, name=m.name))
            case "system" | "developer":
                out.append(SystemMessage(m.content, id=m.id, name=getattr(m, "name", None)))
            case "assistant":
                calls = []
                for j, call in enumerate(m.tool_calls or []):
                    try:
                        args = json.loads(call.function.arguments or "{}")
                    except (json.JSONDecodeError, RecursionError):
                        raise MessageError(f"{where}.toolCalls[{j}].function.arguments", "is not valid JSON") from None
                    if not isinstance(args, dict):  # tool arguments are named: a model never sends a list
                        raise MessageError(f"{where}.toolCalls[{j}].function.arguments", "must be a JSON object")
                    calls.append({"id": call.id, "name": call.function.name, "args": args, "type": "tool_call"})
                out.append(AIMessage(m.content or "", id=m.id, tool_calls=calls, name=m.name))
            case "tool":
                out.append(ToolMessage(_content(m.content, f"{where}.content"), id=m.id, tool_call_id=m.tool_call_id,
                                       status="error" if m.error else "success"))
            case _:
                continue
    _check_tool_results(out, messages)
    return out


def _check_tool_results(converted: list[BaseMessage], original: list[agui.Message]) -> None:
    """Every tool message must answer a tool call of an earlier assistant message."""
    calls: set[str] = set()
    index = {m.id: i for i, m in enumerate(original)}
    for message in converted:
        if isinstance(message, AIMessage):
            calls.update(c["id"] for c in message.tool_calls)
        elif isinstance(message, ToolMessage) and message.tool_call_id not in calls:
            raise MessageError(f"messages[{index[message.id]}].toolCallId",
                               f"{message.tool_call_id!r} answers no tool call of an earlier assistant message")


# --------------------------------------------------------------------------------------- LangChain -> AG-UI


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content
                   if not isinstance(b, dict) or b.get("type") in (None, "text"))


def to_agui(messages: list[BaseMessage]) -> list[dict]:
    """Checkpoint messages as AG-UI wire dicts (for MESSAGES_SNAPSHOT), nulls omitted."""
    out: list[dict] = []
    for m in messages:
        if isinstance(m, HumanMessage):
            out.append({"id": m.id, "role": "user", "content": m.content if isinstance(m.content, str)
                        else text_of(m.content)})
        elif isinstance(m, SystemMessage):
            out.append({"id": m.id, "role": "system", "content": text_of(m.content)})
        elif isinstance(m, AIMessage):
            if reasoning := m.additional_kwargs.get("reasoning_content"):
                out.append({"id": reasoning_id(m.id), "role": "reasoning", "content": reasoning})
            item: dict = {"id": m.id, "role": "assistant"}
            if text := text_of(m.content):
                item["content"] = text
            if m.tool_calls:
                item["toolCalls"] = [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
                    for c in m.tool_calls
                ]
            out.append(item)
        elif isinstance(m, ToolMessage):
            item = {"id": m.id, "role": "tool", "toolCallId": m.tool_call_id, "content": text_of(m.content)}
            if m.status == "error":
                item["error"] = text_of(m.content)
            out.append(item)
    return out


def reasoning_id(message_id: str) -> str:
    return f"{message_id}:reasoning"
