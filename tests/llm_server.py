"""A scripted, OpenAI-compatible LLM server over real HTTP, for tests and benchmarks.

Run it::

    python -m tests.llm_server --port 8100 [--host 127.0.0.1] [--api-key K]
                               [--ttft-ms 50 --token-delay-ms 5 --tokens 200] [--log-limit 10000]

``--api-key K``        require ``Authorization: Bearer K`` on /v1/* (401 otherwise).
``--ttft-ms MS``       unscripted responses wait MS before the first byte (benchmarks).
``--token-delay-ms MS``  ... and MS between tokens.
``--tokens N``         ... and stream N tokens (" w0", " w1", ...) instead of echoing the prompt.
``--log-limit N``      keep only the newest N request records (default 10000; 0 = unlimited).

Fault modes (`{"fault": "html" | "empty" | "reset_before_headers" | …}`): tests/llm_faults.py. The runner
(`LLMServer`, a subprocess driven over HTTP): tests/llm_process.py.

API: ``POST /v1/chat/completions`` (stream or not), ``GET /v1/models``, ``POST /v1/embeddings``
(hashed bag of words, 64 dims unless ``dimensions``, unit length; float or base64 encoding).

Control (no auth): ``POST /_script {"model": "*", "responses": [...]}`` appends to the model's FIFO
(a chat request pops its model's queue, else "*", else the default); ``POST /_models/{model}
{latency_ms, token_delay_ms, fail_status, hang, text}`` sets that model's default (a scripted
response replaces it entirely); ``POST /_reset``; ``GET /_requests`` lists records
``{id, path, model, body, started_at, first_byte_at, ended_at, status, outcome}``. ``outcome`` is
None while running, "hung" while stalled by hang/hang_after_tokens, then "ok" | "error" (error status
or aborted connection) | "disconnected" (the client went away first; ended_at is when it did).

Response spec (all optional): text | tokens, reasoning (``delta.reasoning_content`` before text),
tool_calls [{id, name, arguments: dict | str}], ttft_ms, token_delay_ms, status, error_message,
retry_after, hang, hang_after_tokens, disconnect_after_tokens, bad_json, error_event_after_tokens (an SSE
``{"error": …}`` event in place of the rest), usage, finish_reason, repeat. With none of
text/tokens/tool_calls the content is the default: the model's ``text``, else ``--tokens``, else ``"echo:
" + <last user message>``. Reasoning and tool-argument fragments count as tokens for delays and for the
*_after_tokens limits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import struct
import time
import uuid
from collections import deque

from tests.llm_faults import serve_fault
from tests.llm_process import LLMServer, free_port  # noqa: F401 — the runner, importable from here

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_WORD = re.compile(r"\s*\S+|\s+")
_ERROR_KIND = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
               403: ("permission_error", None), 404: ("invalid_request_error", "model_not_found"),
               429: ("requests", "rate_limit_exceeded")}
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"


class _Abort(Exception):
    """Raised after a partial body: uvicorn then closes the socket mid-response."""


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def embed(text: str, dim: int = 64) -> list[float]:
    """Deterministic unit vector: each lowercase word adds +-1 to a hashed slot."""
    v = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        v[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm else [1.0] + [0.0] * (dim - 1)


def error_body(status: int, message: str | None = None) -> bytes:
    kind, code = _ERROR_KIND.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return _dumps({"error": {"message": message or f"scripted error {status}", "type": kind,
                             "param": None, "code": code}}).encode()


class App:
    """Raw ASGI app; state lives in memory for the life of the process."""

    def __init__(self, api_key: str | None = None, ttft_ms: float = 0, token_delay_ms: float = 0,
                 tokens: int = 0, log_limit: int = 10000):
        self.auth = f"Bearer {api_key}".encode() if api_key else None
        self.cli = {"ttft_ms": ttft_ms, "token_delay_ms": token_delay_ms}
        self.cli_tokens = [f" w{i}" for i in range(tokens)] if tokens else None
        self.log_limit = log_limit
        self._reset()

    def _reset(self) -> None:
        self.queues: dict[str, deque] = {}
        self.models: dict[str, dict] = {}
        self.log: deque = deque(maxlen=self.log_limit or None)
        self.next_id = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if path.startswith("/v1/"):
            return await self._api(scope, method, path, body, receive, send)
        if method == "POST" and path == "/_script":
            req = json.loads(body)
            self.queues.setdefault(req.get("model") or "*", deque()).extend(req.get("responses", []))
        elif method == "POST" and path.startswith("/_models/"):
            self.models[path[len("/_models/"):]] = json.loads(body or b"{}")
        elif method == "POST" and path == "/_reset":
            self._reset()
        elif method == "GET" and path == "/_requests":
            return await _send_json(send, 200, _dumps(list(self.log)).encode())
        else:
            return await _send_json(send, 404, error_body(404, f"no route {method} {path}"))
        await _send_json(send, 200, b'{"ok":true}')

    async def _api(self, scope, method, path, body, receive, send):
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = None
        rec = {"id": None, "path": path, "model": (req or {}).get("model"), "body": req,
               "started_at": time.time(), "first_byte_at": None, "ended_at": None, "status": None,
               "outcome": None}
        if method == "POST" and path in ("/v1/chat/completions", "/v1/embeddings"):  # not GET /v1/models
            self.next_id += 1
            rec["id"] = self.next_id
            self.log.append(rec)
        if self.auth and dict(scope["headers"]).get(b"authorization") != self.auth:
            return await self._error(send, rec, 401, "Incorrect API key provided.")
        if req is None:
            return await self._error(send, rec, 400, "request body is not valid JSON")
        if method == "GET" and path == "/v1/models":
            ids = ["mock-model", *self.models, *(m for m in self.queues if m != "*")]
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "loom-tests"}
                    for m in dict.fromkeys(ids)]
            return await _send_json(send, 200, _dumps({"object": "list", "data": data}).encode())
        if method == "POST" and path == "/v1/embeddings":
            return await self._embeddings(send, rec, req)
        if method != "POST" or path != "/v1/chat/completions":
            return await self._error(send, rec, 404, f"no route {method} {path}")
        spec = self._next_response(rec["model"] or "", req)
        if spec.get("fault"):
            task = asyncio.ensure_future(self._fault(send, rec, spec))
        else:
            run = self._stream if req.get("stream") else self._complete
            task = asyncio.ensure_future(run(send, rec, spec, req))
        # The body is fully read, so the next receive() only returns once the client disconnects.
        watch = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            watch.cancel()
            task.result()  # re-raises _Abort so uvicorn drops the connection
        else:
            if rec["outcome"] in (None, "hung"):  # not a connection this server closed itself
                rec.update(ended_at=time.time(), outcome="disconnected")
            task.cancel()
            await asyncio.wait((task,))

    async def _fault(self, send, rec, spec):
        if spec.get("ttft_ms"):
            await asyncio.sleep(spec["ttft_ms"] / 1000)
        await serve_fault(send, rec, spec)

    def _next_response(self, model: str, req: dict) -> dict:
        for key in (model, "*"):
            queue = self.queues.get(key)
            if queue:
                return queue[0] if queue[0].get("repeat") else queue.popleft()
        beh = self.models.get(model, {})
        spec = {"ttft_ms": beh.get("latency_ms", self.cli["ttft_ms"]),
                "token_delay_ms": beh.get("token_delay_ms", self.cli["token_delay_ms"]),
                "status": beh.get("fail_status"), "hang": beh.get("hang")}
        if "text" in beh:
            spec["text"] = beh["text"]
        elif self.cli_tokens:
            spec["tokens"] = self.cli_tokens
        return spec

    async def _error(self, send, rec, status, message, retry_after=None):
        headers = [(b"retry-after", str(retry_after).encode())] if retry_after is not None else []
        rec.update(first_byte_at=time.time(), status=status)
        await _send_json(send, status, error_body(status, message), headers)
        rec.update(ended_at=time.time(), outcome="error")

    async def _embeddings(self, send, rec, req):
        inputs = req.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        dim = req.get("dimensions") or 64
        data = []
        for i, text in enumerate(inputs):
            vec = embed(text if isinstance(text, str) else " ".join(map(str, text)), dim)
            if req.get("encoding_format") == "base64":  # the openai SDK asks for this by default
                vec = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        n = sum(len(str(t).split()) for t in inputs)
        rec.update(first_byte_at=time.time(), status=200)
        await _send_json(send, 200, _dumps({"object": "list", "data": data, "model": rec["model"],
                                            "usage": {"prompt_tokens": n, "total_tokens": n}}).encode())
        rec.update(ended_at=time.time(), outcome="ok")

    async def _prelude(self, send, rec, spec) -> bool:
        """Latency, hang and scripted errors: everything that happens before the first byte."""
        if spec.get("ttft_ms"):
            await asyncio.sleep(spec["ttft_ms"] / 1000)
        if spec.get("hang"):
            rec["outcome"] = "hung"
            await asyncio.Future()  # until the client disconnects (the task is cancelled)
        if spec.get("status"):
            await self._error(send, rec, spec["status"], spec.get("error_message"), spec.get("retry_after"))
            return False
        return True

    def _parts(self, spec, req):
        """(reasoning tokens, content tokens, tool calls as (id, name, argument fragments))."""
        if "tokens" in spec:
            content = list(spec["tokens"])
        elif "text" in spec or spec.get("tool_calls"):
            content = _WORD.findall(spec.get("text") or "")
        else:
            users = [m for m in req.get("messages", []) if m.get("role") == "user"]
            content = _WORD.findall("echo: " + (_text_of(users[-1].get("content")) if users else ""))
        reasoning = _WORD.findall(spec.get("reasoning") or "")
        calls = []
        for tc in spec.get("tool_calls") or []:
            args = tc.get("arguments", {})
            args = args if isinstance(args, str) else json.dumps(args)
            step = max(1, -(-len(args) // 3))  # about three fragments, like a real stream
            frags = [args[i:i + step] for i in range(0, len(args), step)] or [""]
            calls.append((tc.get("id") or f"call_{uuid.uuid4().hex[:24]}", tc["name"], frags))
        return reasoning, content, calls

    def _usage(self, spec, req, n_completion):
        prompt = sum(len(_text_of(m.get("content")).split()) for m in req.get("messages", []))
        usage = {"prompt_tokens": prompt, "completion_tokens": n_completion, **(spec.get("usage") or {})}
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        return usage

    async def _stream(self, send, rec, spec, req):
        if not await self._prelude(send, rec, spec):
            return
        reasoning, content, calls = self._parts(spec, req)
        cid, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", rec["model"]
        head = (f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{int(time.time())},'
                f'"model":{_dumps(model)},"system_fingerprint":null,"choices":[{{"index":0,"delta":').encode()
        tail = b',"logprobs":null,"finish_reason":null}]}\n\n'
        events = [head + _dumps({"reasoning_content": t}).encode() + tail for t in reasoning]
        events += [head + _dumps({"content": t}).encode() + tail for t in content]
        for i, (call_id, name, frags) in enumerate(calls):
            first = {"index": i, "id": call_id, "type": "function",
                     "function": {"name": name, "arguments": ""}}
            events.append(head + _dumps({"tool_calls": [first]}).encode() + tail)
            events += [head + _dumps({"tool_calls": [{"index": i, "function": {"arguments": f}}]}).encode()
                       + tail for f in frags]
        if spec.get("bad_json"):
            events.insert(0, b"data: {this is not json\n\n")
        if (at := spec.get("error_event_after_tokens")) is not None:  # llama.cpp / vLLM report errors in-stream
            message = spec.get("error_message") or "server error"
            error = {"error": {"code": 500, "message": message, "type": "server_error"}}
            events[at:] = [b"data: " + _dumps(error).encode() + b"\n\n"]
        finish = spec.get("finish_reason") or ("tool_calls" if calls else "stop")
        end = head + b'{},"logprobs":null,"finish_reason":' + _dumps(finish).encode() + b"}]}\n\n"
        if (req.get("stream_options") or {}).get("include_usage"):
            usage = self._usage(spec, req, len(events) - len(calls) - bool(spec.get("bad_json")))
            usage_head = head.split(b',"choices"')[0]  # same id/model, empty choices
            end += usage_head + b',"choices":[],"usage":' + _dumps(usage).encode() + b"}\n\n"
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        rec.update(first_byte_at=time.time(), status=200)
        body = {"type": "http.response.body", "body": head + b'{"role":"assistant","content":""}' + tail,
                "more_body": True}
        await send(body)
        hang_at, cut_at = spec.get("hang_after_tokens"), spec.get("disconnect_after_tokens")
        delay, loop = (spec.get("token_delay_ms") or 0) / 1000, asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(len(events) + 1):
            if i == hang_at:
                rec["outcome"] = "hung"
                await asyncio.Future()
            if i == cut_at:
                rec.update(ended_at=time.time(), outcome="error")
                raise _Abort
            if i == len(events):
                break
            if delay and i:  # scheduled from t0 so per-token overhead does not accumulate
                await asyncio.sleep(max(0.0, t0 + i * delay - loop.time()))
            body["body"] = events[i]
            await send(body)
        await send({"type": "http.response.body", "body": end + _DONE, "more_body": False})
        rec.update(ended_at=time.time(), outcome="ok")

    async def _complete(self, send, rec, spec, req):
        reasoning, content, calls = self._parts(spec, req)
        n = len(reasoning) + len(content) + sum(len(f) for _, _, f in calls)
        if not await self._prelude(send, rec, spec):
            return
        if spec.get("hang_after_tokens") is not None:
            rec["outcome"] = "hung"
            await asyncio.Future()
        await asyncio.sleep(n * (spec.get("token_delay_ms") or 0) / 1000)
        message = {"role": "assistant", "content": "".join(content) if content or not calls else None,
                   "refusal": None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = [
                {"id": c, "type": "function", "function": {"name": nm, "arguments": "".join(f)}}
                for c, nm, f in calls]
        finish = spec.get("finish_reason") or ("tool_calls" if calls else "stop")
        out = _dumps({"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                      "created": int(time.time()), "model": rec["model"], "system_fingerprint": None,
                      "choices": [{"index": 0, "message": message, "logprobs": None,
                                   "finish_reason": finish}],
                      "usage": self._usage(spec, req, n)}).encode()
        if spec.get("bad_json"):
            out = b"{this is not json"
        if spec.get("disconnect_after_tokens") is not None:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
            rec.update(first_byte_at=time.time(), status=200)
            await send({"type": "http.response.body", "body": out[: len(out) // 2], "more_body": True})
            rec.update(ended_at=time.time(), outcome="error")
            raise _Abort
        rec.update(first_byte_at=time.time(), status=200)
        await _send_json(send, 200, out)
        rec.update(ended_at=time.time(), outcome="ok")


async def _send_json(send, status: int, body: bytes, headers=()):
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description="Scripted OpenAI-compatible LLM server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api-key")
    p.add_argument("--ttft-ms", type=float, default=0)
    p.add_argument("--token-delay-ms", type=float, default=0)
    p.add_argument("--tokens", type=int, default=0)
    p.add_argument("--log-limit", type=int, default=10000)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="llm_server %(levelname)s %(message)s")
    # Deliberate aborts are not errors: keep uvicorn's "Exception in ASGI application" out of the log.
    logging.getLogger("uvicorn.error").addFilter(lambda r: not (r.exc_info and r.exc_info[0] is _Abort))
    app = App(a.api_key, a.ttft_ms, a.token_delay_ms, a.tokens, a.log_limit)
    uvicorn.run(app, host=a.host, port=a.port, log_config=None, log_level="warning", access_log=False,
                lifespan="off")


if __name__ == "__main__":
    main()
