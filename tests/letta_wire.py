"""What Letta 0.16.8 puts on the wire, as checks that run against the real server (tests/test_letta_real.py) and
the stand-in (tests/test_letta.py) alike, so the fast tests and the real ones agree on it."""

from __future__ import annotations

import json

import httpx

DONE = {"done": True}


def raw_turn(url: str, key: str, conversation_id: str, messages: list[dict]) -> tuple[int, list[dict]]:
    """POST a streamed turn as letta-client does; the frames (`event: error` ones marked `event`, [DONE] as DONE)."""
    body = {"messages": messages, "streaming": True, "stream_tokens": True, "include_pings": True}
    frames: list[dict] = []
    event = None
    with httpx.stream("POST", f"{url}/v1/conversations/{conversation_id}/messages", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}"}) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                frames.append(DONE if line[6:] == "[DONE]" else {**json.loads(line[6:]), **({"event": event}
                                                                                           if event else {})})
                event = None
    return response.status_code, frames


def new_conversation(url: str, key: str, agent_id: str) -> str:
    response = httpx.post(f"{url}/v1/conversations/", params={"agent_id": agent_id}, timeout=30,
                          headers={"authorization": f"Bearer {key}"})
    response.raise_for_status()
    return response.json()["id"]


def assert_call_frames(frames: list[dict], kind: str, call_id: str, name: str, arguments: dict) -> None:
    """A call streams as a first frame naming it, then argument fragments (tool calls leave out the keys a frame
    lacks, approvals send them as null); every frame repeats the call id and carries `tool_calls` as the same
    single object."""
    calls = [f for f in frames if f.get("message_type") == kind]
    assert len(calls) >= 2, frames
    for frame in calls:
        assert frame["tool_calls"] == frame["tool_call"] and frame["tool_call"]["tool_call_id"] == call_id
        assert frame["seq_id"] is None and frame["run_id"] and frame["date"]
    first, rest = calls[0]["tool_call"], [f["tool_call"] for f in calls[1:]]
    if kind == "tool_call_message":  # keys left out
        assert first == {"name": name, "tool_call_id": call_id} and all(set(f) == {"arguments", "tool_call_id"}
                                                                        for f in rest), calls
    else:  # keys present, null
        assert first == {"name": name, "arguments": None, "tool_call_id": call_id}, first
        assert all(f["name"] is None for f in rest), rest
    assert json.loads("".join(f["tool_call"]["arguments"] for f in calls[1:])) == arguments


def assert_turn_end(frames: list[dict], stop: str = "end_turn") -> None:
    """stop_reason and usage_statistics carry no id, run_id or date; usage adds context_tokens and run_ids."""
    *_, stop_frame, usage, done = frames
    assert stop_frame == {"message_type": "stop_reason", "stop_reason": stop} and done == DONE
    assert usage["message_type"] == "usage_statistics" and not {"id", "run_id", "date"} & set(usage)
    assert {"context_tokens", "run_ids", "prompt_tokens", "completion_tokens", "total_tokens"} <= set(usage)


def assert_conflict_in_stream(status: int, frames: list[dict]) -> None:
    """A new message while an approval or client tool is pending: HTTP 200, then a CONFLICT error in the stream."""
    assert status == 200
    assert [f.get("message_type") for f in frames] == ["ping", "stop_reason", "error_message", None], frames
    assert frames[1]["stop_reason"] == "error" and frames[-1] == DONE
    assert frames[2]["event"] == "error" and frames[2]["error_type"] == "internal_error"
    assert frames[2]["message"].startswith("CONFLICT: Cannot send a new message: The agent is waiting for approval")


def assert_rest_facts(url: str, key: str, agent_id: str) -> None:
    """Cancel with nothing running: 409; delete: `null`; unknown agent: 404 "Agent not found"; health: no key;
    a bad key: 401 {"detail": "Unauthorized"}; a conversation's messages start with the system message."""
    auth = {"authorization": f"Bearer {key}"}
    conversation = new_conversation(url, key, agent_id)
    listed = httpx.get(f"{url}/v1/conversations/{conversation}/messages", headers=auth, timeout=30).json()
    assert [m["message_type"] for m in listed] == ["system_message"]
    assert httpx.post(f"{url}/v1/conversations/{conversation}/cancel", headers=auth, timeout=30).status_code == 409
    deleted = httpx.delete(f"{url}/v1/conversations/{conversation}", headers=auth, timeout=30)
    assert (deleted.status_code, deleted.json()) == (200, None)
    missing = httpx.post(f"{url}/v1/conversations/", params={"agent_id": "agent-nope"}, headers=auth, timeout=30)
    assert (missing.status_code, missing.json()["detail"]) == (404, "Agent not found")
    assert httpx.get(f"{url}/v1/health/", timeout=30).status_code == 200
    refused = httpx.get(f"{url}/v1/agents/", headers={"authorization": "Bearer wrong"}, timeout=30)
    assert (refused.status_code, refused.json()) == (401, {"detail": "Unauthorized"})


def user_messages_after_resend(url: str, key: str, agent_id: str) -> list[str]:
    """Send one user message twice with the same otid: Letta stores both (it does not deduplicate by otid)."""
    conversation = new_conversation(url, key, agent_id)
    message = {"type": "message", "role": "user", "content": "same otid", "otid": "0f6b1b8e-3f8a-4a57-9c55-5d9d"
                                                                                  "0a1b2c3d"}
    for _ in range(2):
        assert raw_turn(url, key, conversation, [message])[0] == 200
    listed = httpx.get(f"{url}/v1/conversations/{conversation}/messages", timeout=30,
                       headers={"authorization": f"Bearer {key}"}).json()
    return [m["content"] for m in listed if m["message_type"] == "user_message"]


def assert_cancelled_stream(status: int, frames: list[dict]) -> None:
    """A run cancelled while streaming ends with stop_reason `cancelled`: no usage, no [DONE]."""
    assert status == 200 and frames[0]["message_type"] == "ping"
    assert frames[-1] == {"message_type": "stop_reason", "stop_reason": "cancelled"}
    assert DONE not in frames and not [f for f in frames if f.get("message_type") == "usage_statistics"]
