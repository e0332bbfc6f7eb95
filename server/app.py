"""The FastAPI app: every graph in langgraph.json as an AG-UI 1.0 endpoint."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from contextlib import asynccontextmanager

from ag_ui.core import RunAgentInput
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from loom.adapters.agui.bounds import check_ids, check_tree
from loom.adapters.agui.inbound import InputError, user_from_props
from loom.adapters.openpipe.reporter import Reporter
from loom.graphs import telemetry
from loom.graphs.llm import close_http_clients
from loom.server import tracing
from loom.server.admission import Refused, admit
from loom.server.auth import authenticate, resolve_user
from loom.server.guard import RequestGuard
from loom.server.history_api import router as history_router
from loom.server.memory_api import router as memory_router
from loom.server.observe import CountRejections
from loom.server.observe import router as metrics_router
from loom.server.openai_api import router as openai_router
from loom.server.openpipe_api import router as openpipe_router
from loom.server.persistence import open_persistence
from loom.server.ready import router as ready_router
from loom.server.registry import GraphEntry, compile_all
from loom.server.runs import stream_run
from loom.server.settings import Settings, get_settings
from loom.server.shutdown import Drain
from loom.server.sse import EventStreamResponse
from loom.server.task_api import router as task_router
from loom.server.threads import open_threads

log = logging.getLogger("loom.server")

DEMO_NOTE = ("A tiny offline demo model (Gemma 3 270M, base checkpoint) is answering: expect weak answers. "
             "Point loom at a real model with LOOM_LLM_BASE_URL, LOOM_LLM_API_KEY and LOOM_LLM_MODEL.")


def _error_response(description: str) -> dict:
    error = {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                              "field": {"type": "string"}}, "required": ["code", "message"]}
    schema = {"type": "object", "properties": {"error": error}, "required": ["error"]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Every route may answer these, in loom's error shape (the OpenAPI document lists them).
ERROR_RESPONSES: dict[int | str, dict] = {
    400: _error_response("Bad request"), 401: _error_response("No or invalid API key"),
    403: _error_response("Not allowed for this key or client"), 404: _error_response("Not found"),
    413: _error_response("Body too large (LOOM_MAX_BODY_BYTES)"),
    422: _error_response("Invalid input; `field` names the offending value"),
    431: _error_response("Headers too large (LOOM_MAX_HEADER_BYTES)"),
}


def _error(status: int, code: str, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with open_persistence(settings.database_url) as (checkpointer, store), \
                open_threads(settings.database_url, settings.run_lease_seconds) as threads:
            app.state.graphs = compile_all(checkpointer, store)
            app.state.store = store  # the memory REST API and the graphs share it
            app.state.threads = threads
            app.state.drain = Drain(settings.shutdown_grace_seconds)
            app.state.drain.install()
            for entry in app.state.graphs.values():
                entry.context_json_schema  # noqa: B018 — build schemas at start-up, not on a request
            if settings.demo_model:
                log.warning(DEMO_NOTE)
            # Start-up objects (graphs, schemas, libraries) never die: keep them out of every later full
            # collection, which otherwise cost a fresh server a 110-145 ms pause mid-run (bench/moa.py).
            gc.collect()
            gc.freeze()
            reporter = Reporter(settings).start() if settings.openpipe_enabled else None
            try:
                yield
            finally:
                if reporter is not None:
                    await reporter.stop()  # flush what is queued, bounded by LOOM_OPENPIPE_FLUSH_SECONDS
                await close_http_clients()
                await asyncio.to_thread(tracing.shutdown)  # flushes queued spans over the network

    app = FastAPI(title="loom", version="0.1.0", lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.settings = settings
    app.add_middleware(RequestGuard, settings=settings)
    telemetry.enabled = settings.metrics_enabled
    tracing.configure(user_ids=settings.openpipe_user_id)  # only with OTEL_EXPORTER_OTLP_ENDPOINT set
    if settings.metrics_enabled:
        telemetry.count_client_retries()
        app.add_middleware(CountRejections)  # outside the guard: its early 401/413/431 count too
    app.include_router(memory_router)
    app.include_router(task_router)
    app.include_router(openpipe_router)
    app.include_router(history_router)
    app.include_router(openai_router)
    app.include_router(ready_router)
    app.include_router(metrics_router)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own validation (query parameters, JSON bodies of the REST routes) in loom's error shape."""
        error = exc.errors()[0]
        field = _field_path(tuple(p for p in error["loc"] if p not in ("body", "query", "path")))
        return _error(422, "invalid_input", f"{field}: {error['msg']}", field=field)

    @app.exception_handler(HTTPException)  # Starlette's: unknown routes and methods answer in loom's shape too
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else {"code": "http_error", "message": str(exc.detail)}
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return _error(422, "too_deep", "The body is nested too deeply to read.")

    @app.get("/health")
    async def health(request: Request) -> dict:
        model = {"model": settings.llm_model, "demo": settings.demo_model}
        if _may_see_internals(request, settings):  # the URL names internal hosts: keep it from anonymous callers
            model["base_url"] = _without_credentials(settings.llm_base_url)
        if settings.demo_model:
            model["note"] = DEMO_NOTE
        database = "postgresql" if settings.database_url.startswith("postgres") else "sqlite"
        return {"status": "ok", "graphs": sorted(app.state.graphs), "model": model, "database": database,
                "pid": os.getpid()}  # which worker or replica answered

    @app.get("/agents")
    async def agents(request: Request) -> list[dict]:
        authenticate(request, settings)
        return [{"name": e.name, "description": e.description, "contextSchema": e.context_json_schema}
                for e in app.state.graphs.values()]

    @app.get("/openwebui/pipe.py")
    async def openwebui_pipe(request: Request):
        """The OpenWebUI pipe, its loom URL LOOM_PUBLIC_URL (never the request's Host header). No key needed."""
        from fastapi.responses import PlainTextResponse

        from loom.adapters.openwebui.bundle import render_pipe

        return PlainTextResponse(render_pipe(settings.served_url),
                                 headers={"content-disposition": 'inline; filename="loom_pipe.py"'})

    @app.post("/agents/{name}")
    async def run_agent(name: str, request: Request):
        caller = authenticate(request, settings)
        entry: GraphEntry | None = app.state.graphs.get(name)
        if entry is None:
            return _error(404, "unknown_agent", f"No agent named {name!r}; available: {', '.join(app.state.graphs)}")
        body = await _read_body(request, settings.max_body_bytes)
        if isinstance(body, JSONResponse):
            return body
        run = _parse_run(body, settings)
        if isinstance(run, JSONResponse):
            return run
        user_id = resolve_user(caller, user_from_props(run))
        try:
            prepared = await admit(app.state, entry, run, user_id)
        except Refused as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except InputError as exc:
            return _error(422, exc.code, str(exc), field=exc.field)
        return EventStreamResponse(stream_run(prepared), on_close=prepared.lease.release_soon,
                                   on_disconnect=prepared.budget.cancel_model_requests)

    return app


async def _read_body(request: Request, limit: int) -> bytes | JSONResponse:
    too_large = _error(413, "body_too_large", f"The request body exceeds {limit} bytes (LOOM_MAX_BODY_BYTES).",
                       limit=limit)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_run(body: bytes, settings: Settings) -> RunAgentInput | JSONResponse:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(422, "invalid_json", f"The body is not valid JSON: {exc}")
    except RecursionError:
        return _error(422, "too_deep", "The body is nested too deeply to read.")
    if not isinstance(data, dict):
        return _error(422, "invalid_input", "The body must be a RunAgentInput object.")
    if (refused := check_tree(data)) is not None:
        return _error(422, refused.code, str(refused), field=refused.field)
    # Count before validating: a huge list should be refused without the cost of parsing every item.
    for key, limit, setting in (("messages", settings.max_messages, "LOOM_MAX_MESSAGES"),
                                ("tools", settings.max_tools, "LOOM_MAX_TOOLS")):
        if isinstance(data.get(key), list) and len(data[key]) > limit:
            return _error(422, f"too_many_{key}", f"{key}: {len(data[key])} items exceed the limit of {limit} "
                          f"({setting}).", field=key, limit=limit)
    try:
        run = RunAgentInput.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = _field_path(error["loc"])
        return _error(422, "invalid_input", f"{field}: {error['msg']}", field=field)
    if (refused := check_ids(run)) is not None:
        return _error(422, refused.code, str(refused), field=refused.field)
    return run


def _may_see_internals(request: Request, settings: Settings) -> bool:
    try:
        authenticate(request, settings)
    except HTTPException:
        return False
    return True


def _without_credentials(url: str | None) -> str | None:
    from urllib.parse import urlsplit, urlunsplit

    if not url:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))) \
        if parts.hostname else url


def _field_path(loc: tuple) -> str:
    """pydantic's error location as a JSON path with wire names, e.g. messages[2].toolCallId."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("user", "assistant", "system", "developer", "tool", "activity", "reasoning", "text",
                      "image", "audio", "video", "document", "data", "url", "file"):
            continue  # discriminated-union tags, not fields
        else:
            head, *rest = str(part).split("_")
            name = head + "".join(w.title() for w in rest)
            path += f".{name}" if path else name
    return path or "body"
