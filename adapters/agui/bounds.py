"""Checks on a RunAgentInput before any work: nesting depth, text that is not text, and the shape of ids.

Why: ids become database keys (PostgreSQL refuses NUL and has length limits: a 3,000-character thread id used
to fail only after the model had answered), and a NUL or a lone surrogate in a message reaches the model and
comes back as its fault. Refused up front with the JSON path of the value.
"""

from __future__ import annotations

from typing import Any

from ag_ui.core import RunAgentInput

from loom.adapters.agui.inbound import InputError
from loom.graphs.text_checks import MAX_ID_LENGTH, NOT_TEXT, valid_id

MAX_DEPTH = 64


def check_tree(data: Any, max_depth: int = MAX_DEPTH) -> InputError | None:
    """The first value nested too deep, or string (key or value) holding a NUL or a lone surrogate."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > max_depth:
            return InputError("too_deep", f"{path}: nested more than {max_depth} levels deep", path)
        if isinstance(value, str):
            if NOT_TEXT.search(value):
                return not_text(path or "body")
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{_escaped(key)}" if path else _escaped(key)
                if NOT_TEXT.search(key):
                    return not_text(child)
                stack.append((item, child, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
    return None


def _escaped(key: str) -> str:
    """A key as it may appear in an error's field path: NUL and surrogates as \\uXXXX (the answer is JSON)."""
    return NOT_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", key)


def not_text(field: str) -> InputError:
    return InputError("invalid_text", f"{field}: contains a NUL character or a lone UTF-16 surrogate, which is not "
                      "valid text", field)


def check_ids(run: RunAgentInput) -> InputError | None:
    """threadId, runId and every message and tool-call id: 1 to 256 printable characters."""
    ids: list[tuple[str, Any]] = [("threadId", run.thread_id), ("runId", run.run_id)]
    if run.parent_run_id is not None:
        ids.append(("parentRunId", run.parent_run_id))
    for i, message in enumerate(run.messages):
        ids.append((f"messages[{i}].id", message.id))
        for j, call in enumerate(getattr(message, "tool_calls", None) or []):
            ids.append((f"messages[{i}].toolCalls[{j}].id", call.id))
        if (call_id := getattr(message, "tool_call_id", None)) is not None:
            ids.append((f"messages[{i}].toolCallId", call_id))
    for field, value in ids:
        if not valid_id(value):
            return InputError("invalid_id", f"{field}: an id must be 1 to {MAX_ID_LENGTH} printable characters",
                              field)
    return None
