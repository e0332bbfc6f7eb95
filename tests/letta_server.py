"""A stand-in Letta server over real HTTP, built from Letta's documented REST surface.

The real Letta server runs in tests/test_letta_real.py (tests/letta_rig.py); this stand-in, which follows the
real server's wire (tests/letta_wire.py checks both), serves the fast tests and what the real server cannot be made
to do on demand: 409/429/5xx before the stream, cut or truncated streams, a hung stream, scripted stop reasons
(for 5xx and lost responses, tests/test_letta_real_faults.py puts a fault proxy in front of the real server).
The tests drive the real `letta-client` against it (tests/letta_process.py runs it for them). Run it::

    python -m tests.letta_server --port 8283 [--api-key K]

Letta API (the parts loom uses): health; agents create/retrieve/list (tags, match_all_tags, name);
conversations create (`?agent_id=`, 404 for an unknown agent), retrieve, cancel, messages list (desc/asc, limit),
messages create (SSE when `streaming`); runs list (conversation_id, agent_id, active, order, limit); an agent's
archival memory (create, list with after/limit/ascending, delete, search). `Authorization: Bearer K` is required
on /v1/* when --api-key is set (401 otherwise).

Control (no auth): ``POST /_script {"responses": [turn, ...]}`` appends turns to a FIFO that message requests pop;
``POST /_reset`` (``{"log_only": true}``: only scripts and log); ``GET /_requests`` lists records ``{id, method,
path, query, body, status, outcome}`` where outcome is "ok" | "error" | "cut" | "disconnected" (the client left
first) | None while streaming; ``GET /_state`` returns agents, conversations (with their messages), runs and
passages.

A turn (all keys optional)::

    status, detail, retry_after, accept   fail before the stream with this HTTP status; with accept the server
                                          took the message and only its response was lost (the ambiguous case):
                                          as on Letta, the run goes on without its client for accept_ms
                                          (default 300), the conversation busy, and stores the input as its
                                          first step ends
    steps: [item, ...]                    streamed in order, see below
    stop                                  stop reason (default end_turn, requires_approval after an approval)
    usage                                 usage_statistics fields (a default is computed)
    error {error_type, message, detail}   `event: error` after the stop reason, like the real server
    cut | no_done | hang                  abort the connection | end without [DONE] | wait for the client to leave
                                          (each after the steps)
    delay_ms                              pause between frames

Items (expanded into frames by tests/letta_script.py): reasoning, hidden, assistant, tool_call, tool_calls,
tool_return, approval, ping, sleep_ms, raw. Without a scripted turn: a user message is echoed, approvals run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections import deque
from urllib.parse import parse_qs

from tests.letta_script import archival_page, archival_search, content_text, default_turn, frames, letta_id, now_iso

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
CONFLICT = ("CONFLICT: Cannot send a new message: The agent is waiting for approval on a tool call. Please approve "
            "or deny the pending request before continuing.")
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class _Abort(Exception):
    """Raised after a partial body: uvicorn then drops the connection mid-response."""


class App:
    def __init__(self, api_key: str | None = None):
        self.auth = f"Bearer {api_key}".encode() if api_key else None
        self._reset()

    def _reset(self) -> None:
        self.agents: dict[str, dict] = {}
        self.conversations: dict[str, dict] = {}
        self.passages: dict[str, list[dict]] = {}
        self.runs: list[dict] = []
        self.queue: deque = deque()
        self.background: set[asyncio.Task] = set()
        self.log: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:  # read the whole body first: answering early desynchronises keep-alive connections
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        query = {k: v if len(v) > 1 else v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        if not path.startswith("/v1/"):
            return await self._control(method, path, body, send)
        rec = {"id": len(self.log) + 1, "method": method, "path": path, "query": query,
               "body": json.loads(body) if body else None, "status": None, "outcome": None}
        self.log.append(rec)
        if self.auth and path.rstrip("/") != "/v1/health" and \
                dict(scope["headers"]).get(b"authorization") != self.auth:  # as Letta: health needs no key
            return await _json(send, rec, 401, {"detail": "Unauthorized"})
        try:
            await self._route(method, path.rstrip("/"), query, rec, receive, send)
        except KeyError as exc:
            await _json(send, rec, 404, {"detail": f"Not found: {exc.args[0]}"})

    async def _control(self, method, path, body, send):
        if method == "POST" and path == "/_script":
            self.queue.extend(json.loads(body).get("responses", []))
        elif method == "POST" and path == "/_reset":
            if (json.loads(body) if body else {}).get("log_only"):  # keep agents and conversations
                self.queue.clear()
                self.log.clear()
            else:
                self._reset()
        elif method == "GET" and path == "/_requests":
            return await _json(send, None, 200, self.log)
        elif method == "GET" and path == "/_state":
            return await _json(send, None, 200, {"agents": self.agents, "conversations": self.conversations,
                                                  "runs": self.runs, "passages": self.passages})
        else:
            return await _json(send, None, 404, {"detail": f"no route {method} {path}"})
        await _json(send, None, 200, {"ok": True})

    # ------------------------------------------------------------------------------------------------ routes

    async def _route(self, method, path, query, rec, receive, send):
        req, parts = rec["body"] or {}, path.split("/")[2:]  # after "/v1"
        match method, parts:
            case "GET", ["health"]:
                return await _json(send, rec, 200, {"version": "0.16.8-standin", "status": "ok"})
            case "POST", ["agents"]:
                agent = {"id": letta_id("agent"), "name": req.get("name") or "agent", "tags": req.get("tags") or [],
                         "tools": [], "blocks": [], "embedding_config": {}, "system": req.get("system") or "",
                         "model": req.get("model"), "embedding": req.get("embedding")}
                self.agents[agent["id"]] = agent
                return await _json(send, rec, 200, agent)
            case "GET", ["agents"]:
                return await _json(send, rec, 200, self._list_agents(query))
            case "GET", ["agents", agent_id]:
                return await _json(send, rec, 200, self._agent(agent_id))
            case "POST", ["agents", agent_id, "archival-memory"]:
                self._agent(agent_id)
                now = now_iso()
                passage = {"id": letta_id("passage"), "text": req["text"], "tags": req.get("tags") or [],
                           "created_at": req.get("created_at") or now, "updated_at": now, "archive_id": agent_id}
                self.passages.setdefault(agent_id, []).append(passage)
                return await _json(send, rec, 200, [passage])
            case "GET", ["agents", agent_id, "archival-memory"]:
                self._agent(agent_id)
                return await _json(send, rec, 200, archival_page(self.passages.get(agent_id, []), query))
            case "GET", ["agents", agent_id, "archival-memory", "search"]:
                self._agent(agent_id)
                return await _json(send, rec, 200, archival_search(self.passages.get(agent_id, []), query))
            case "DELETE", ["agents", agent_id, "archival-memory", passage_id]:
                before = self.passages.get(self._agent(agent_id)["id"], [])
                kept = [p for p in before if p["id"] != passage_id]
                if len(kept) == len(before):
                    raise KeyError(passage_id)
                self.passages[agent_id] = kept
                return await _json(send, rec, 200, {})
            case "POST", ["conversations"]:
                agent = self.agents.get(query.get("agent_id", ""))
                if agent is None:
                    return await _json(send, rec, 404, {"detail": "Agent not found"})
                system = {"id": letta_id("message"), "message_type": "system_message", "content": agent["system"],
                          "date": now_iso()}  # Letta lists the system prompt as a conversation's first message
                conv = {"id": letta_id("conv"), "agent_id": agent["id"], "messages": [system], "busy": False,
                        "pending": [], "cancelled": 0}
                self.conversations[conv["id"]] = conv
                return await _json(send, rec, 200, _public(conv))
            case "GET", ["conversations", conv_id]:
                return await _json(send, rec, 200, _public(self.conversations[conv_id]))
            case "DELETE", ["conversations", conv_id]:
                self.conversations.pop(conv_id)
                return await _json(send, rec, 200, None)
            case "POST", ["conversations", conv_id, "cancel"]:
                conv = self.conversations[conv_id]
                if not conv["busy"]:
                    return await _json(send, rec, 409, {"detail": "No active runs found for this conversation."})
                conv["cancelled"] += 1
                return await _json(send, rec, 200, {})
            case "GET", ["conversations", conv_id, "messages"]:
                messages = list(self.conversations[conv_id]["messages"])
                if query.get("order") == "desc":
                    messages.reverse()
                return await _json(send, rec, 200, messages[: int(query.get("limit", 100))])
            case "POST", ["conversations", conv_id, "messages"]:
                return await self._turn(self.conversations[conv_id], req, rec, receive, send)
            case "GET", ["runs"]:
                return await _json(send, rec, 200, self._list_runs(query))
        await _json(send, rec, 404, {"detail": f"no route {method} {path}"})

    def _agent(self, agent_id: str) -> dict:
        if agent_id not in self.agents:
            raise KeyError(f"agent {agent_id}")
        return self.agents[agent_id]

    def _list_runs(self, query: dict) -> list[dict]:
        keys = ("conversation_id", "agent_id")
        out = [r for r in self.runs if all(not query.get(k) or r[k] == query[k] for k in keys)]
        if query.get("active") == "true":
            out = [r for r in out if r["status"] in ("created", "running")]
        return (out if query.get("order") == "asc" else out[::-1])[: int(query.get("limit") or 100)]

    def _new_run(self, conv: dict) -> dict:
        run = {"id": letta_id("run"), "agent_id": conv["agent_id"], "conversation_id": conv["id"],
               "status": "running", "stop_reason": None, "created_at": now_iso()}
        self.runs.append(run)
        conv["busy"] = run["id"]
        return run

    def _accepted(self, conv: dict, inputs: list[dict], seconds: float) -> None:
        """A run whose response was lost: it finishes on its own, storing the input when its first step ends."""
        run = self._new_run(conv)

        async def finish() -> None:
            await asyncio.sleep(seconds)
            self._store_inputs(conv, inputs)
            run.update(status="completed", stop_reason="end_turn")
            conv["busy"] = False

        task = asyncio.ensure_future(finish())
        self.background.add(task)  # keep a reference until it is done
        task.add_done_callback(self.background.discard)

    def _list_agents(self, query: dict) -> list[dict]:
        tags = query.get("tags") or []
        tags = [tags] if isinstance(tags, str) else tags
        match_all = query.get("match_all_tags") == "true"
        out = [a for a in self.agents.values() if not query.get("name") or a["name"] == query["name"]]
        if tags:
            out = [a for a in out if (all if match_all else any)(t in a["tags"] for t in tags)]
        return out[: int(query.get("limit", 50))]

    # ------------------------------------------------------------------------------------------------ a turn

    async def _turn(self, conv, req, rec, receive, send):
        if conv["busy"]:
            return await _json(send, rec, 409, {"detail": "Conversation is busy: another request is being "
                                                          "processed", "run_id": conv["busy"]})
        inputs = req.get("messages") or [{"role": "user", "content": req.get("input") or ""}]
        kinds = {m.get("type") or "message" for m in inputs}
        if conv["pending"] and "message" in kinds:  # Letta refuses inside a 200 stream, not with a 409
            turn = {"steps": [{"ping": True}], "stop": "error", "error": {"message": CONFLICT}}
        else:
            turn = self.queue.popleft() if self.queue else default_turn(inputs)
        if turn.get("status"):
            if turn.get("accept"):
                self._accepted(conv, inputs, (turn.get("accept_ms") or 300) / 1000)
            headers = [(b"retry-after", str(turn["retry_after"]).encode())] if "retry_after" in turn else []
            return await _json(send, rec, turn["status"], {"detail": turn.get("detail") or "scripted error"},
                               headers)
        if not turn.get("error", {}).get("message", "").startswith("CONFLICT"):
            self._store_inputs(conv, inputs)
            conv["pending"] = []
        if not req.get("streaming"):
            return await _json(send, rec, 400, {"detail": "the stand-in only streams"})
        run = self._new_run(conv)
        task = asyncio.ensure_future(self._stream(conv, turn, run["id"], rec, send))
        watch = asyncio.ensure_future(receive())  # the body is read: this only returns when the client leaves
        try:
            done, _ = await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                watch.cancel()
                task.result()
            else:
                rec["outcome"] = "disconnected"
                task.cancel()
                await asyncio.wait((task,))
        finally:
            conv["busy"] = False
            run["status"] = "cancelled" if rec["outcome"] == "disconnected" else "completed"

    def _store_inputs(self, conv, inputs) -> None:
        for m in inputs:
            kind = m.get("type") or "message"
            message_type = {"message": "user_message", "approval": "approval_response_message",
                            "tool_return": "tool_return_message"}[kind]
            conv["messages"].append({**m, "id": letta_id("message"), "message_type": message_type, "date": now_iso()})

    async def _stream(self, conv, turn, run_id, rec, send):
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        rec["status"] = 200
        delay = (turn.get("delay_ms") or 0) / 1000

        async def emit(frame: dict | bytes) -> None:
            if isinstance(frame, dict):  # Letta: messages carry run_id and date (seq_id null); stop and usage don't
                if frame["message_type"] not in ("stop_reason", "usage_statistics"):
                    frame = {"run_id": run_id, "seq_id": None, "date": now_iso(), **frame}
                frame = b"data: " + _dumps(frame).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            if delay:
                await asyncio.sleep(delay)

        last_call = None
        for item in turn.get("steps", []):
            if "sleep_ms" in item:
                await asyncio.sleep(item["sleep_ms"] / 1000)
                continue
            for frame in frames(item, last_call):
                if frame.get("message_type") == "approval_request_message" and \
                        frame["tool_call"]["tool_call_id"] not in conv["pending"]:
                    conv["pending"].append(frame["tool_call"]["tool_call_id"])
                if frame.get("message_type") == "tool_call_message" and frame["tool_call"].get("tool_call_id"):
                    last_call = frame["tool_call"]["tool_call_id"]
                if frame.get("message_type") == "assistant_message":
                    conv["messages"].append({"id": frame["id"], "message_type": "assistant_message",
                                             "content": content_text(frame["content"]), "date": now_iso()})
                await emit(frame)
        if turn.get("cut"):
            rec["outcome"] = "cut"
            raise _Abort
        if turn.get("hang"):
            await asyncio.Future()  # until the client leaves (this task is cancelled)
        if not turn.get("no_done"):
            stop = turn.get("stop") or ("requires_approval" if conv["pending"] else "end_turn")
            await emit({"message_type": "stop_reason", "stop_reason": stop})
            if turn.get("error"):  # the real server sends the error event after the stop reason
                error = {"message_type": "error_message", "run_id": run_id, "error_type": "internal_error",
                         "message": "An unknown error occurred with the LLM streaming request.", **turn["error"]}
                await emit(b"event: error\ndata: " + _dumps(error).encode() + b"\n\n")
            elif stop == "cancelled":  # a cancelled run ends without usage and without [DONE]
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                rec["outcome"] = rec["outcome"] or "ok"
                return
            else:
                usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "step_count": 1,
                         "run_ids": None, "context_tokens": 19, **(turn.get("usage") or {})}
                await emit({"message_type": "usage_statistics", **usage})
            await emit(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        rec["outcome"] = rec["outcome"] or "ok"


def _public(conv: dict) -> dict:
    return {"id": conv["id"], "agent_id": conv["agent_id"], "created_at": now_iso()}


async def _json(send, rec, status: int, payload, headers=()):
    body = _dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
    if rec is not None:
        rec.update(status=status, outcome="ok" if status < 400 else "error")


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description="Stand-in Letta server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api-key")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="letta_server %(levelname)s %(message)s")
    logging.getLogger("uvicorn.error").addFilter(lambda r: not (r.exc_info and r.exc_info[0] is _Abort))
    uvicorn.run(App(a.api_key), host=a.host, port=a.port, log_config=None, log_level="warning",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
