"""LangGraph interrupts <-> AG-UI interrupts.

A graph that wants a standard AG-UI interrupt calls `interrupt({"interrupts": [{id, reason, message?,
toolCallId?, responseSchema?, metadata?}, ...]})` and receives `{id: {"status", "payload"}}` on resume. Any
other interrupt value becomes one `input_required` interrupt whose id is the LangGraph interrupt id, and the
graph receives the answer's payload (`interrupt("Which city?")` returns "Paris"); an answer without a payload
(cancelled) resumes it with `{"status": ...}`, since LangGraph cannot resume with nothing.
"""

from __future__ import annotations

from typing import Any

_FIELDS = ("id", "reason", "message", "toolCallId", "responseSchema", "expiresAt", "metadata")


def _parts(graph_interrupt: Any) -> tuple[str, Any]:
    if isinstance(graph_interrupt, dict):
        return graph_interrupt["id"], graph_interrupt.get("value")
    return graph_interrupt.id, graph_interrupt.value


def is_agui_form(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("interrupts"), list)


def plain_answer(answer: dict) -> Any:
    """What `interrupt(value)` returns for a value not in AG-UI form: the payload, as LangGraph resumes it."""
    return answer["payload"] if answer.get("payload") is not None else {"status": answer["status"]}


def agui_interrupts(graph_interrupts: list[Any]) -> list[dict]:
    out: list[dict] = []
    for graph_interrupt in graph_interrupts:
        interrupt_id, value = _parts(graph_interrupt)
        if is_agui_form(value):
            for item in value["interrupts"]:
                out.append({k: item[k] for k in _FIELDS if item.get(k) is not None})
        else:
            message = value if isinstance(value, str) else None
            item = {"id": interrupt_id, "reason": "input_required"}
            if message:
                item["message"] = message
            elif value is not None:
                item["metadata"] = {"value": value}
            out.append(item)
    return out
