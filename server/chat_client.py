"""`loom chat` as an AG-UI client of a running loom server (the default when one answers)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from loom.server.settings import Settings


class ChatClientError(RuntimeError):
    """The server could not be reached or refused the run; the message says which and why."""


def local_server_url(settings: Settings) -> str | None:
    """The loom server `loom serve` starts with these settings, if it answers now."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # a bind-all address
    url = f"http://{host}:{settings.port}"
    try:
        health = httpx.get(f"{url}/health", timeout=1.0)
        return url if health.status_code == 200 and "graphs" in health.json() else None
    except (httpx.HTTPError, ValueError):
        return None


async def chat_over_http(url: str, api_key: str | None, graph: str, message: str, thread_id: str,
                         render: Callable[[dict], Any]) -> None:
    """Send one user turn on `thread_id` (its stored history first, so the turn appends) and render each event."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    url = url.rstrip("/")
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(10.0, read=None)) as client:
        try:
            stored = await client.get(f"{url}/threads/{thread_id}/messages")
        except httpx.HTTPError as exc:
            raise ChatClientError(f"cannot reach loom at {url}: {exc}") from None
        _raise_for_error(stored, url, allow_404=True)
        history = stored.json()["messages"] if stored.status_code == 200 else []
        body = {"threadId": thread_id, "runId": str(uuid.uuid4()), "state": {}, "tools": [], "context": [],
                "forwardedProps": {},
                "messages": [*history, {"id": str(uuid.uuid4()), "role": "user", "content": message}]}
        async with client.stream("POST", f"{url}/agents/{graph}", json=body,
                                 headers={"accept": "text/event-stream"}) as response:
            if response.status_code != 200:
                await response.aread()
                _raise_for_error(response, url)
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    render(json.loads(line[6:]))


def _raise_for_error(response: httpx.Response, url: str, allow_404: bool = False) -> None:
    if response.status_code < 400 or (allow_404 and response.status_code == 404):
        return
    try:
        error = response.json().get("error") or {}
        detail = f"{error.get('code', response.status_code)}: {error.get('message', response.text)}"
    except ValueError:
        detail = f"HTTP {response.status_code}: {response.text[:300]}"
    if response.status_code == 401:
        detail += " (set LOOM_CHAT_API_KEY or pass --api-key)"
    raise ChatClientError(f"loom at {url} refused the run: {detail}")
