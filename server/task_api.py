"""POST /tasks/{task}: one cheap model call for a chat client's background task (a title, tags, follow-ups).

OpenWebUI asks the chat's model for these after every answer; running a graph (MoA's proposers, the agent's
tools) for each would cost more than the answer. This is one non-streamed call to the configured model with the
prompt the client built, nothing stored, reported to OpenPipe as a `system_task` (unless the user opted out).
The model is LOOM_TASK_MODEL when set (a smaller one is usually enough), else the chat model.

Body: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "openpipe": {"optOut": bool}?}`.
Who: as for /memories (a proxy key names the user in `X-Loom-User`). Answer: `{"content": str}`. Errors are
`{"error": {"code", "message"}}`: 400 invalid_task / invalid_messages, 502 model_error.
"""

from __future__ import annotations

import re
import uuid

from fastapi import APIRouter, HTTPException, Request
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from loom.adapters.openpipe.reporter import current as openpipe_reporter
from loom.adapters.openpipe.reporter import opted_out
from loom.graphs.llm import chat_model
from loom.server.memory_api import _user
from loom.server.settings import get_settings

router = APIRouter(tags=["tasks"])
TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
ROLES = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
MAX_TASK_TOKENS = 512  # titles, tags and follow-ups are short; a runaway answer is cut, not paid for


class TaskRequest(BaseModel):
    messages: list[dict] = Field(min_length=1, max_length=200)
    openpipe: dict | None = None


def _messages(raw: list[dict]) -> list:
    messages = []
    for index, message in enumerate(raw):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise HTTPException(400, {"code": "invalid_messages", "message": f"messages[{index}]: needs a role "
                                      f"({', '.join(ROLES)}) and text content"})
        messages.append(ROLES[role](content))
    return messages


@router.post("/tasks/{task}")
async def run_task(task: str, body: TaskRequest, request: Request) -> dict:
    if not TASK_NAME.fullmatch(task):
        raise HTTPException(400, {"code": "invalid_task", "message": "A task name is lower-case letters, digits "
                                                                     "and underscores, e.g. title_generation."})
    user_id = _user(request)
    messages = _messages(body.messages)
    callbacks = []
    if (reporter := openpipe_reporter()) is not None and not opted_out({"openpipe": body.openpipe}):
        task_id = f"task-{uuid.uuid4()}"
        handler = reporter.handler(graph="task", thread_id=task_id, user_id=user_id, run_id=task_id, task=task)
        callbacks = [handler] if handler is not None else []
    model = chat_model(get_settings().task_model, max_tokens=MAX_TASK_TOKENS)
    model = model.model_copy(update={"streaming": False, "stream_usage": False})
    try:
        answer = await model.ainvoke(messages, config={"callbacks": callbacks})
    except Exception as exc:  # noqa: BLE001 — any model failure is the same answer to the client
        raise HTTPException(502, {"code": "model_error", "message": f"The model call failed: {exc}"}) from None
    content = answer.content
    return {"content": content if isinstance(content, str) else str(content)}
