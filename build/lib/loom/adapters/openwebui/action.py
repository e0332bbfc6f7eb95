"""
title: Send to OpenPipe dataset
author: loom
version: 0.1.0
description: A button under assistant messages that adds this chat (a loom thread) to an OpenPipe dataset.
required_open_webui_version: 0.5.0
"""

# The OpenWebUI Action of loom: install it next to the loom pipe (Admin Panel → Functions → "+" → paste, save,
# switch it on, and enable it for the loom models). Its valves: loom URL and the same proxy API key as the pipe,
# the dataset name and split. Clicking the button asks loom (POST /threads/{thread}/dataset) to add the chat's
# conversation, and every regenerated answer as a preference pair, to the dataset; a notification confirms.
#
# Generated from loom's adapters/openwebui/action.py (GET /openwebui/action.py fills in the loom URL). One file,
# no imports beyond what OpenWebUI ships.

import json

import httpx
from pydantic import BaseModel, Field

LOOM_URL = "http://127.0.0.1:8000"  # GET /openwebui/action.py fills in the server's URL


class Action:
    class Valves(BaseModel):
        loom_url: str = Field(LOOM_URL, description="Base URL of the loom server.")
        api_key: str = Field("", description="A proxy key of the loom server (the pipe's).")
        dataset: str = Field("loom", description="OpenPipe dataset the chat is added to (created if needed).")
        split: str = Field("TRAIN", description="TRAIN or TEST.")
        include_system: bool = Field(False, description="Keep system messages in the entries.")
        timeout: float = Field(30.0, description="Seconds to wait for loom.")

    def __init__(self):
        self.valves = self.Valves()

    async def action(self, body: dict, __user__: dict | None = None, __event_emitter__=None,
                     __event_call__=None, __model__: dict | None = None, __id__: str | None = None) -> None:
        valves = self.valves
        chat_id = body.get("chat_id") or ""
        graph = str(body.get("model") or (__model__ or {}).get("id") or "").split(".", 1)[-1]
        if not chat_id or not graph:
            await _notify(__event_emitter__, "error", "Only a saved chat with a loom model can be sent.")
            return None
        await _status(__event_emitter__, "Sending the chat to OpenPipe…", False)
        headers = {"content-type": "application/json"}
        if valves.api_key:
            headers["authorization"] = f"Bearer {valves.api_key}"
        if __user__ and __user__.get("id"):
            headers["x-loom-user"] = str(__user__["id"])
        thread_id = f"openwebui-{chat_id}-{graph}"  # the pipe's thread of this chat and graph
        payload = {"dataset": valves.dataset, "split": valves.split, "include_system": valves.include_system,
                   "metadata": {"source": "openwebui", "chat_id": str(chat_id)}}
        try:
            async with httpx.AsyncClient(timeout=valves.timeout) as client:
                response = await client.post(f"{valves.loom_url.rstrip('/')}/threads/{thread_id}/dataset",
                                             headers=headers, content=json.dumps(payload))
        except httpx.HTTPError as exc:
            await _status(__event_emitter__, "", True)
            await _notify(__event_emitter__, "error", f"loom could not be reached: {type(exc).__name__}")
            return None
        await _status(__event_emitter__, "", True)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code != 200:
            message = (answer.get("error") or {}).get("message") if isinstance(answer, dict) else None
            await _notify(__event_emitter__, "error", f"Not sent: {message or response.status_code}")
            return None
        pairs = answer.get("preference_pairs", 0)
        text = (f"Added {answer.get('entries_created', 0)} entr{'y' if answer.get('entries_created') == 1 else 'ies'}"
                f" to the OpenPipe dataset {answer.get('dataset', valves.dataset)!r}"
                + (f" ({pairs} preference pair{'s' if pairs != 1 else ''})" if pairs else "") + ".")
        if answer.get("errors"):
            text += f" {len(answer['errors'])} refused: {answer['errors'][0].get('message')}"
        await _notify(__event_emitter__, "warning" if answer.get("errors") else "success", text)
        return None


async def _notify(emit, kind: str, content: str) -> None:
    if emit is not None:
        await emit({"type": "notification", "data": {"type": kind, "content": content}})


async def _status(emit, description: str, done: bool) -> None:
    if emit is not None:
        await emit({"type": "status", "data": {"description": description, "done": done, "hidden": done}})


def render_action(loom_url: str) -> str:
    """This file with the loom URL filled in (the served Action)."""
    from pathlib import Path

    source = Path(__file__).read_text()
    source = source.replace(f'LOOM_URL = "{LOOM_URL}"', f"LOOM_URL = {loom_url.rstrip('/')!r}", 1)
    return source.split("\n\ndef render_action(", 1)[0] + "\n"
