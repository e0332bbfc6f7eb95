"""Turn scripts of the stand-in Letta server (tests/letta_server.py) expanded into Letta's SSE message frames.

The shapes follow letta-client 1.12.1's LettaStreamingResponse union:
token deltas of one message share its `id`; tool-call arguments arrive in fragments after a first frame that
names the call; tool returns carry both the legacy single fields and `tool_returns`. Also the archival memory
list (cursor pages) and search (here: ranked by word overlap, standing in for Letta's embedding search; as
there, unrelated passages fill the results up to top_k).

Items: {"reasoning": text} | {"hidden": "redacted"} | {"assistant": text, "parts": bool} (token deltas sharing one
id) | {"tool_call": {name, arguments, id?}} (streamed argument deltas) | {"tool_calls": [...]} (parallel, one frame)
| {"tool_return": {id?, return, status?}} | {"approval": {name, arguments, id?}} | {"ping": true} |
{"sleep_ms": n} | {"raw": {...}} (sent as is).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

_WORD = re.compile(r"\s*\S+|\s+")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def letta_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def content_text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def default_turn(inputs: list[dict]) -> dict:
    steps = []
    for m in inputs:
        kind = m.get("type") or "message"
        if kind == "message":
            steps.append({"assistant": "echo: " + content_text(m.get("content"))})
        elif kind == "approval":
            for a in m.get("approvals") or []:  # like Letta: a denied call gets no tool return in the stream
                if a.get("approve"):
                    steps.append({"tool_return": {"id": a["tool_call_id"], "status": "success", "return": "ran"}})
            steps.append({"assistant": "Done."})
        elif kind == "tool_return":
            got = ", ".join(content_text(r.get("tool_return")) for r in m.get("tool_returns") or [])
            steps.append({"assistant": f"Got: {got}"})
    return {"steps": steps}


def frames(item: dict, last_call: str | None) -> list[dict]:
    if "reasoning" in item:
        rid = letta_id("message")
        return [{"id": rid, "message_type": "reasoning_message", "reasoning": t, "source": "reasoner_model"}
                for t in _WORD.findall(item["reasoning"])]
    if "hidden" in item:
        return [{"id": letta_id("message"), "message_type": "hidden_reasoning_message", "state": item["hidden"],
                 "hidden_reasoning": None}]
    if "assistant" in item:
        aid = letta_id("message")
        words = _WORD.findall(item["assistant"])
        return [{"id": aid, "message_type": "assistant_message",
                 "content": [{"type": "text", "text": w}] if item.get("parts") else w} for w in words]
    if "tool_call" in item or "approval" in item:
        spec = item.get("tool_call") or item["approval"]
        kind = "tool_call_message" if "tool_call" in item else "approval_request_message"
        call_id, args = spec.get("id") or f"call_{uuid.uuid4().hex[:12]}", spec.get("arguments", {})
        args = args if isinstance(args, str) else json.dumps(args)
        mid = letta_id("message")
        # As Letta streams a call: the first frame names it, the fragments repeat the call id; a tool call leaves
        # out the keys a frame lacks, an approval sends them as null; `tool_calls` is the same single object.
        approval = kind == "approval_request_message"
        step = max(1, -(-len(args) // 3))
        calls = [{"name": spec["name"], **({"arguments": None} if approval else {}), "tool_call_id": call_id}]
        calls += [{**({"name": None} if approval else {}), "arguments": args[i:i + step], "tool_call_id": call_id}
                  for i in range(0, len(args), step)]
        return [{"id": mid, "message_type": kind, "tool_call": call, "tool_calls": call} for call in calls]
    if "tool_calls" in item:
        calls = [{"name": c["name"], "tool_call_id": c.get("id") or f"call_{uuid.uuid4().hex[:12]}",
                  "arguments": c["arguments"] if isinstance(c["arguments"], str) else json.dumps(c["arguments"])}
                 for c in item["tool_calls"]]
        return [{"id": letta_id("message"), "message_type": "tool_call_message", "tool_call": calls[0],
                 "tool_calls": calls}]
    if "tool_return" in item:
        spec = item["tool_return"]
        call_id, status = spec.get("id") or last_call, spec.get("status", "success")
        value = spec.get("return", "")
        return [{"id": letta_id("message"), "message_type": "tool_return_message", "tool_call_id": call_id,
                 "status": status, "tool_return": value, "stdout": [], "stderr": [],
                 "tool_returns": [{"tool_call_id": call_id, "status": status, "tool_return": value, "type": "tool"}]}]
    if "ping" in item:
        return [{"id": letta_id("ping"), "message_type": "ping"}]
    if "raw" in item:
        return [item["raw"]]
    raise ValueError(f"unknown script item {item}")


def archival_page(passages: list[dict], query: dict) -> list[dict]:
    items = sorted(passages, key=lambda p: (p["created_at"], p["id"]),
                   reverse=query.get("ascending") == "false")
    if after := query.get("after"):
        ids = [p["id"] for p in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    return items[: int(query.get("limit") or 1000)]


def archival_search(passages: list[dict], query: dict) -> dict:
    words = set(re.findall(r"\w+", str(query.get("query", "")).lower()))
    scored = [(len(words & set(re.findall(r"\w+", p["text"].lower()))), p) for p in passages]
    # Like Letta's vector search: the nearest passages up to top_k, related or not, and no score.
    hits = [p for _, p in sorted(scored, key=lambda sp: -sp[0])][: int(query.get("top_k") or 10)]
    results = [{"id": p["id"], "content": p["text"], "timestamp": p["created_at"], "tags": p["tags"]} for p in hits]
    return {"count": len(results), "results": results}
