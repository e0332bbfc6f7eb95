"""REST API for the authenticated user's own memories.

    GET    /memories?limit=20&offset=0   a page, newest first: {items, total, limit, offset} (limit 1..100)
    GET    /memories/search?q=…&limit=5  {items} best first, each with a score in (0, 1]
    POST   /memories                     {content, tags?} -> 201 the memory
    GET    /memories/{id}                the memory
    PATCH  /memories/{id}                {content?, tags?} -> the memory
    DELETE /memories/{id}                204

Who: a key bound to a user acts for that user only (naming another is 403). A trusted-proxy key (the OpenWebUI
pipe) names the end user in the `X-Loom-User` header or the `user` query parameter (required, 422 without).
With no keys configured (loopback only) the user is `X-Loom-User` or "local". Errors are
`{"error": {"code", "message"}}`: 404 memory_not_found, 422 memory_limit (the message names the limit),
403 memory_search_disabled, 502 memory_backend_unavailable.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from loom.graphs.memory_backend import memory_backend
from loom.graphs.memory_store import MemoryBackend, MemoryStoreError
from loom.server.auth import authenticate, resolve_user
from loom.server.settings import get_settings

router = APIRouter(prefix="/memories", tags=["memories"])


class NewMemory(BaseModel):
    content: str
    tags: list[str] = Field(default_factory=list)


class MemoryChange(BaseModel):
    content: str | None = None
    tags: list[str] | None = None


def _user(request: Request) -> str:
    settings = getattr(request.app.state, "settings", None) or get_settings()
    caller = authenticate(request, settings)
    named = request.headers.get("x-loom-user") or request.query_params.get("user")
    if caller.kind == "proxy" and not named:
        raise HTTPException(422, {"code": "missing_user", "message": "A proxy API key must name the user: send the "
                                                                     "X-Loom-User header (or ?user=)."})
    if caller.kind == "user" and named is not None and named != caller.user_id:
        raise HTTPException(403, {"code": "user_mismatch", "message": "This API key is bound to one user and "
                                                                      "cannot act for another (X-Loom-User)."})
    return resolve_user(caller, named)


def _backend(request: Request) -> MemoryBackend:
    return memory_backend(request.app.state.store)


def _fail(exc: MemoryStoreError) -> HTTPException:
    return HTTPException(exc.status, {"code": exc.code, "message": exc.message})


@router.get("")
async def list_memories(request: Request, limit: int = 20, offset: int = 0, user_id: str = Depends(_user)) -> dict:
    try:
        return (await _backend(request).list(user_id, limit, offset)).to_dict()
    except MemoryStoreError as exc:
        raise _fail(exc) from None


@router.get("/search")
async def search_memories(request: Request, q: str = "", limit: int = 5, user_id: str = Depends(_user)) -> dict:
    try:
        found = await _backend(request).search(user_id, q, limit)
    except MemoryStoreError as exc:
        raise _fail(exc) from None
    return {"items": [m.to_dict() for m in found]}


@router.post("", status_code=201)
async def add_memory(request: Request, body: NewMemory, user_id: str = Depends(_user)) -> dict:
    try:
        return (await _backend(request).add(user_id, body.content, body.tags)).to_dict()
    except MemoryStoreError as exc:
        raise _fail(exc) from None


@router.get("/{memory_id}")
async def get_memory(request: Request, memory_id: str, user_id: str = Depends(_user)) -> dict:
    try:
        return (await _backend(request).get(user_id, memory_id)).to_dict()
    except MemoryStoreError as exc:
        raise _fail(exc) from None


@router.patch("/{memory_id}")
async def update_memory(request: Request, memory_id: str, body: MemoryChange, user_id: str = Depends(_user)) -> dict:
    try:
        return (await _backend(request).update(user_id, memory_id, body.content, body.tags)).to_dict()
    except MemoryStoreError as exc:
        raise _fail(exc) from None


@router.delete("/{memory_id}", status_code=204)
async def delete_memory(request: Request, memory_id: str, user_id: str = Depends(_user)) -> Response:
    try:
        await _backend(request).delete(user_id, memory_id)
    except MemoryStoreError as exc:
        raise _fail(exc) from None
    return Response(status_code=204)
