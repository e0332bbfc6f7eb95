"""OpenPipe routes: a thread into a dataset, the reporter's counters, and the OpenWebUI Action.

    POST /threads/{thread_id}/dataset  {dataset, split?, metadata?, include_system?, preference_pairs?}
         -> {dataset_id, dataset, entries, entries_created, preference_pairs, errors}
    GET  /openpipe/status              the reporter's queue counters (enabled: false when off)
    GET  /openwebui/action.py          the OpenWebUI Action ("Send to OpenPipe dataset"), its loom URL filled in

Who: the same rules as /memories (a proxy key names the user in X-Loom-User). Only the caller's own threads
(the user id each run stores in its checkpoint metadata): another user's thread is 404 like a missing one.
Errors: 404 thread_not_found, 503 openpipe_not_configured, 502 openpipe_unavailable / openpipe_auth, 422.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from loom.adapters.openpipe.client import OpenPipeAuthError, OpenPipeClient, OpenPipeError
from loom.adapters.openpipe.datasets import thread_entries
from loom.adapters.openpipe.reporter import current
from loom.graphs.text_checks import valid_id
from loom.server.memory_api import _user
from loom.server.threads import ThreadNotFound, not_found

router = APIRouter(tags=["openpipe"])


class DatasetRequest(BaseModel):
    dataset: str = Field(min_length=1, max_length=200)
    split: Literal["TRAIN", "TEST"] | None = "TRAIN"
    metadata: dict[str, str] = Field(default_factory=dict)
    include_system: bool = False
    preference_pairs: bool | None = None  # None: LOOM_OPENPIPE_PREFERENCE_PAIRS


async def _thread(request: Request, thread_id: str, user_id: str):
    """The newest state of the caller's thread (any graph: they share one checkpointer) and its history."""
    if not valid_id(thread_id):  # no run could have made it (and PostgreSQL refuses a NUL): nothing to look up
        raise HTTPException(404, not_found(thread_id))
    try:
        await request.app.state.threads.assert_owner(thread_id, user_id)
    except ThreadNotFound:
        raise HTTPException(404, not_found(thread_id)) from None
    graphs = request.app.state.graphs
    config = {"configurable": {"thread_id": thread_id}}
    for entry in graphs.values():
        snapshot = await entry.graph.aget_state(config)
        if not snapshot.values and not snapshot.metadata:
            continue
        owner = (snapshot.metadata or {}).get("user_id")
        if owner != user_id:
            break
        graph = graphs.get((snapshot.metadata or {}).get("graph")) or entry
        snapshot = await graph.graph.aget_state(config)
        history = [s.values.get("messages", []) async for s in graph.graph.aget_state_history(config)
                   if s.values and (s.metadata or {}).get("user_id") == user_id]
        history.reverse()  # oldest first
        return graph.name, snapshot.values.get("messages", []), history
    raise HTTPException(404, not_found(thread_id))


@router.post("/threads/{thread_id}/dataset")
async def thread_to_dataset(request: Request, thread_id: str, body: DatasetRequest,
                            user_id: str = Depends(_user)) -> dict:
    settings = request.app.state.settings
    if not settings.openpipe_api_key:
        raise HTTPException(503, {"code": "openpipe_not_configured", "message": "Set LOOM_OPENPIPE_API_KEY."})
    graph, messages, history = await _thread(request, thread_id, user_id)
    pairs = settings.openpipe_preference_pairs if body.preference_pairs is None else body.preference_pairs
    metadata = {"source": "loom", "graph": graph, "thread_id": thread_id, **settings.openpipe_metadata,
                **body.metadata}
    entries = thread_entries(messages, history, split=body.split, metadata=metadata,
                             include_system=body.include_system, pairs=pairs)
    if not entries:
        raise HTTPException(422, {"code": "empty_thread", "message": "The thread has no answered turn yet."})
    try:
        async with OpenPipeClient(settings.openpipe_api_key, settings.openpipe_base_url,
                                  settings.openpipe_timeout) as client:
            dataset = await client.dataset_by_name(body.dataset, create=True)
            result = await client.add_entries(dataset["id"], entries)
    except OpenPipeAuthError as exc:
        raise HTTPException(502, {"code": "openpipe_auth", "message": str(exc)}) from None
    except OpenPipeError as exc:
        raise HTTPException(502, {"code": "openpipe_unavailable", "message": str(exc)}) from None
    errors = ((result.get("errors") or {}).get("data")) or []
    return {"dataset_id": dataset["id"], "dataset": dataset.get("name", body.dataset), "entries": len(entries),
            "entries_created": result.get("entries_created", 0),
            "preference_pairs": sum(1 for e in entries if "rejected_message" in e),
            "errors": [{"entry_index": e.get("entry_index"), "message": e.get("message")} for e in errors]}


@router.get("/openpipe/status")
async def openpipe_status(request: Request, user_id: str = Depends(_user)) -> dict:
    reporter = current()
    return {"enabled": reporter is not None, **(reporter.status() if reporter else {})}


@router.get("/openwebui/action.py")
async def openwebui_action(request: Request):
    """The OpenWebUI Action, its loom URL LOOM_PUBLIC_URL (never the request's Host header). It holds no key."""
    from loom.adapters.openwebui.action import render_action

    return PlainTextResponse(render_action(request.app.state.settings.served_url),
                             headers={"content-disposition": 'inline; filename="loom_openpipe_action.py"'})
