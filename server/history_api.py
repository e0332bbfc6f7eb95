"""A thread's messages, for clients that continue a conversation they did not keep (`loom chat --thread`).

    GET /threads/{thread_id}/messages  -> {"threadId", "graph", "messages": [AG-UI messages]}

Who: the same rules as /memories and datasets; another user's thread is 404 like a missing one.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from loom.adapters.agui.messages import to_agui
from loom.server.memory_api import _user
from loom.server.openpipe_api import _thread

router = APIRouter(tags=["threads"])


@router.get("/threads/{thread_id}/messages")
async def thread_messages(request: Request, thread_id: str, user_id: str = Depends(_user)) -> dict:
    graph, messages, _ = await _thread(request, thread_id, user_id)
    return {"threadId": thread_id, "graph": graph, "messages": to_agui(messages)}
