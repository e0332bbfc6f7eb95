"""Every graph as an OpenAI model: GET /v1/models, POST /v1/chat/completions.

The same run as POST /agents/{graph} (auth, prepare_run, stream_run, busy threads); only the edges are
translated, by adapters/openai. Errors are in OpenAI's shape, with the statuses the openai SDKs map to their
exception classes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from ag_ui.core import RunAgentInput
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from loom.adapters.agui.inbound import InputError
from loom.adapters.openai.inbound import RequestError, chat_request, model_of, named_user, thread_hint
from loom.adapters.openai.outbound import DONE, ChunkTranslator, error_body, run_error_status
from loom.adapters.openai.threads import adopt_stored_turns
from loom.server.admission import Refused, admit
from loom.server.auth import Caller, authenticate, resolve_user
from loom.server.registry import GraphEntry
from loom.server.runs import stream_run
from loom.server.sse import EventStreamResponse
from loom.server.threads import ThreadNotFound, not_found

router = APIRouter()
STARTED = int(time.time())  # models' `created`: graphs exist from start-up on

HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 409: "conflict_error",
              413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}
# AG-UI refusals found before the first event, and their OpenAI status.
PREPARE_STATUS = {"interrupt_pending": 409, "thread_busy": 409}


def _error(status: int, message: str, code: str | None = None, param: str | None = None,
           type_: str | None = None, headers: dict | None = None) -> JSONResponse:
    type_ = type_ or HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def _from_http(exc: HTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
    return _error(exc.status_code, detail.get("message", ""), detail.get("code"), headers=exc.headers)


def _caller(request: Request) -> Caller | JSONResponse:
    try:
        return authenticate(request, request.app.state.settings)
    except HTTPException as exc:
        return _from_http(exc)


def _model(entry: GraphEntry) -> dict:
    return {"id": entry.name, "object": "model", "created": STARTED, "owned_by": "loom"}


@router.get("/v1/models")
async def list_models(request: Request):
    if isinstance(caller := _caller(request), JSONResponse):
        return caller
    return {"object": "list", "data": [_model(e) for e in request.app.state.graphs.values()]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request):
    if isinstance(caller := _caller(request), JSONResponse):
        return caller
    entry = request.app.state.graphs.get(model_id)
    if entry is None:
        return _unknown_model(request, model_id)
    return _model(entry)


def _unknown_model(request: Request, model: str) -> JSONResponse:
    return _error(404, f"The model {model!r} does not exist; loom serves one model per graph: "
                  f"{', '.join(request.app.state.graphs)}.", "model_not_found", "model")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    from loom.server.app import _read_body  # the AG-UI endpoint's body limit (app.py includes this router)

    settings = request.app.state.settings
    if isinstance(caller := _caller(request), JSONResponse):
        return caller
    raw = await _read_body(request, settings.max_body_bytes)
    if isinstance(raw, JSONResponse):
        return _error(413, json.loads(raw.body)["error"]["message"], "body_too_large")
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        body = json.loads(raw)
        entry: GraphEntry | None = request.app.state.graphs.get(model_of(body))
        if entry is None:
            return _unknown_model(request, body["model"])
        fields = frozenset(entry.context_json_schema["properties"])  # what a client may set
        hint = thread_hint(headers, entry.name, body)
        chat = chat_request(body, thread_id=hint, context_fields=fields, headers=headers,
                            max_messages=settings.max_messages, max_tools=settings.max_tools)
        user_id = resolve_user(caller, named_user(headers, body) if caller.kind != "user" else None)
        if hint is not None and "resume" not in chat.run:
            # Another user's thread must look like a missing one before anything of it is read.
            await request.app.state.threads.assert_usable(hint, user_id)
            snapshot = await entry.graph.aget_state({"configurable": {"thread_id": hint}})
            stored = snapshot.values.get("messages", []) if snapshot.values else []
            chat.run["messages"] = adopt_stored_turns(chat.run["messages"], stored)
        run = RunAgentInput.model_validate(chat.run)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"The body is not valid JSON: {exc}", "invalid_json")
    except RequestError as exc:
        return _error(exc.status, str(exc), exc.code, exc.param)
    except HTTPException as exc:
        return _from_http(exc)
    except ThreadNotFound as exc:
        return _error(404, not_found(exc.args[0] if exc.args else "")["message"], "thread_not_found")
    except ValidationError as exc:  # what the translation produced from the caller's messages
        error = exc.errors()[0]
        return _error(400, f"messages: {error['msg']}", "invalid_messages", "messages")

    try:
        prepared = await admit(request.app.state, entry, run, user_id)  # ownership, lease, shutdown
    except Refused as exc:
        return _error(exc.status, exc.message, exc.code)
    except InputError as exc:
        param = (exc.field or "").replace("forwardedProps.context", "loom.context") or None
        return _error(400, str(exc).replace("forwardedProps.context", "loom.context"), exc.code, param)
    if prepared.error is not None:  # known before the first event: a plain HTTP error, not a broken stream
        await prepared.lease.release()
        return _error(PREPARE_STATUS.get(prepared.error.code, 400), _prepare_message(prepared.error),
                      prepared.error.code, prepared.error.field)

    translator = ChunkTranslator(f"chatcmpl-{uuid.uuid4().hex}", entry.name, run.thread_id,
                                 client_tools=chat.client_tools, progress=chat.progress,
                                 include_usage=chat.include_usage, collect=not chat.stream)
    reply_headers = {"x-loom-thread": run.thread_id}
    if chat.ignored:
        reply_headers["x-loom-ignored-params"] = ",".join(chat.ignored)
    if chat.stream:
        response = EventStreamResponse(_chunks(stream_run(prepared, encode=list), translator),
                                       on_close=prepared.lease.release_soon,
                                       on_disconnect=prepared.budget.cancel_model_requests)
        response.headers.update(reply_headers)
        return response
    try:
        async with aclosing(stream_run(prepared, encode=list)) as events:
            async for batch in events:
                if not isinstance(batch, str):  # a keepalive comment has no meaning here
                    for event in batch:
                        translator.feed(event)
    finally:
        await prepared.lease.release()
    if translator.error is not None:
        status, type_ = run_error_status(translator.error["code"])
        return _error(status, translator.error["message"], translator.error["code"], type_=type_,
                      headers=reply_headers)
    return JSONResponse(translator.completion(), headers=reply_headers)


def _prepare_message(error: InputError) -> str:
    if error.code == "interrupt_pending":
        return ("This thread waits for a confirmation: answer the loom_confirm tool call with a role \"tool\" "
                "message (\"yes\" approves, anything else declines).")
    return str(error)


async def _chunks(events: AsyncIterator, translator: ChunkTranslator) -> AsyncIterator[str]:
    """SSE text of the chunks; after an error chunk the stream ends without [DONE]."""
    async with aclosing(events):
        async for batch in events:
            if isinstance(batch, str):
                yield batch  # keepalive comment: proxies keep a quiet stream open, clients skip it
                continue
            yield "".join(translator.sse(chunk) for event in batch for chunk in translator.feed(event))
    if translator.error is None:
        yield DONE
