"""A pending confirmation (an AG-UI interrupt) as a tool call an OpenAI client can answer.

OpenAI clients have no way to answer an interrupt, but every one of them can answer a tool call. A run that
stops for a confirmation ends with `finish_reason: "tool_calls"` and one `loom_confirm` call per open
interrupt; the caller approves by sending a `role: "tool"` result for that call ("yes", "approve", "true" or
`{"approved": true}`), anything else declines it (the text is the reason).

The call id carries the thread and the interrupt id, so the answer finds its run even when the caller sends
no thread header (a stateless client starts a fresh thread per request otherwise).
"""

from __future__ import annotations

import base64
import json

TOOL_NAME = "loom_confirm"
PREFIX = "loomconfirm-"
APPROVALS = frozenset({"yes", "y", "approve", "approved", "allow", "allowed", "ok", "true"})


def call_id(thread_id: str, interrupt_id: str) -> str:
    raw = json.dumps([thread_id, interrupt_id], separators=(",", ":")).encode()
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_call_id(value: str) -> tuple[str, str] | None:
    """(thread id, interrupt id) of a `loom_confirm` call id, or None for any other id."""
    if not value.startswith(PREFIX):
        return None
    encoded = value[len(PREFIX):]
    try:
        thread_id, interrupt_id = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, TypeError):
        return None
    return (thread_id, interrupt_id) if isinstance(thread_id, str) and isinstance(interrupt_id, str) else None


def decision(answer: str) -> dict:
    """An AG-UI resume entry's status and payload for the caller's tool result."""
    text = answer.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("approved"), bool):
        payload = {"approved": parsed["approved"]}
        if parsed.get("reason"):
            payload["reason"] = str(parsed["reason"])
        return {"status": "resolved", "payload": payload}
    if text.lower().rstrip(".!") in APPROVALS or parsed is True:
        return {"status": "resolved", "payload": {"approved": True}}
    return {"status": "resolved", "payload": {"approved": False, "reason": text or "declined"}}


def arguments(interrupt: dict, calls: dict[str, tuple[str, str]]) -> str:
    """The `loom_confirm` call's arguments: the question, and the server-side call it is about."""
    out: dict = {"message": interrupt.get("message") or "Approve this action?"}
    if (call := calls.get(interrupt.get("toolCallId") or "")) is not None:
        name, args = call
        out["tool"] = name
        try:
            out["arguments"] = json.loads(args or "{}")
        except ValueError:
            out["arguments"] = args
    return json.dumps(out, ensure_ascii=False)
