"""letta-client plumbing: one AsyncLetta per event loop, conversations, and sending a turn exactly once.

Sending is the one non-idempotent call. letta-client would retry a POST that timed out or got a 5xx before the
stream began, without an idempotency key (notes A1.6), so the send runs with the client's retries off and loom
retries itself (exponential backoff with full jitter, `retry-after` honoured):

- failures where Letta certainly did not take the message (no connection, 429, 409 busy) are retried;
- ambiguous ones (5xx, a connection dropped or a read timeout before the stream) are retried only after the
  conversation's recent messages show that no message with our `otid` arrived. Letta stores a turn's input only
  when the turn's first step ends (a lost response usually means a run still going), so the check first waits
  for the conversation's active runs to end;
- every attempt carries the same `otid`s, derived from the AG-UI message ids. Letta stores a message sent twice
  with the same otid twice (it does not deduplicate by otid), so the check above is what prevents a double send;
  the otid is what the check looks for.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import httpx
import letta_client
from letta_client import AsyncLetta
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from loom.adapters.letta.config import letta_settings
from loom.adapters.letta.errors import LettaError, LettaNotConfigured, from_letta, never_sent
from loom.graphs.telemetry import record_letta

_OTID_NAMESPACE = uuid.UUID("5b0f3c52-3f0e-4d3e-9a6c-6c6f6f6d6c74")
_backoff = wait_random_exponential(multiplier=0.5, max=8)
_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_background: set[asyncio.Task] = set()
_SETTLE_POLL = 0.25  # seconds between looks at a conversation's active runs


def letta(base_url: str | None = None, api_key: str | None = None) -> AsyncLetta:
    """The AsyncLetta for these settings on the running event loop (its connection pool is bound to the loop)."""
    settings = letta_settings()
    base_url = base_url or settings.letta_base_url
    api_key = api_key if api_key is not None else settings.letta_api_key
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (base_url, api_key)
    if key not in per_loop:
        per_loop[key] = AsyncLetta(base_url=base_url, api_key=api_key or None, max_retries=settings.letta_max_retries,
                                   timeout=httpx.Timeout(settings.letta_timeout, connect=5.0))
    return per_loop[key]


def otid(conversation_id: str, message_id: str) -> str:
    """Stable per (conversation, message): a re-sent AG-UI message keeps its idempotency id."""
    return str(uuid.uuid5(_OTID_NAMESPACE, f"{conversation_id}/{message_id}"))


async def create_conversation(client: AsyncLetta, agent_id: str) -> str:
    if not agent_id:
        raise LettaNotConfigured("No Letta agent: set LOOM_LETTA_AGENT_ID or forwardedProps.context.agent_id.")
    try:  # safe to let the client retry: a duplicate empty conversation costs nothing
        return (await client.conversations.create(agent_id=agent_id)).id
    except letta_client.APIError as exc:
        raise from_letta(exc, base_url=str(client.base_url), agent_id=agent_id, what="conversation") from exc


class _Retry(Exception):
    def __init__(self, original: letta_client.APIError):
        super().__init__(str(original))
        self.original = original


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    original = getattr(exc, "original", None)
    response = getattr(original, "response", None)
    if response is not None:
        for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            try:
                seconds = float(response.headers.get(header, "")) * scale
            except ValueError:
                continue
            if 0 <= seconds <= 60:
                return seconds
    return _backoff(state)


def _refused(exc: letta_client.APIError) -> bool:
    """Letta did not take the message: retrying cannot duplicate it."""
    if isinstance(exc, letta_client.RateLimitError):
        return True
    if isinstance(exc, letta_client.ConflictError):
        return "approval" not in str(exc.body).lower()  # busy: retry; a pending approval will not go away
    return never_sent(exc)


def _ambiguous(exc: letta_client.APIError) -> bool:
    if isinstance(exc, letta_client.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 408
    return isinstance(exc, letta_client.APIConnectionError)


async def _arrived(client: AsyncLetta, conversation_id: str, otids: set[str], settle: float,
                   on_wait: Callable[[], None] | None = None) -> bool:
    """Whether a message with one of our otids is in the conversation. Unknown counts as yes: never resend blind.

    A run still active in the conversation may hold the message without having stored it yet (Letta stores the
    input when the first step ends, and finishes a run whose client left): wait up to `settle` seconds for it,
    calling `on_wait` at each look (the caller's keep-alive: the wait can outlast a proxy's read timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle
    try:
        while (await client.runs.list(conversation_id=conversation_id, active=True, limit=1)).items:
            if loop.time() >= deadline:
                return True
            if on_wait is not None:
                on_wait()
            await asyncio.sleep(_SETTLE_POLL)
        page = await client.conversations.messages.list(conversation_id, order="desc", limit=20)
    except letta_client.APIError:
        return True
    return any(getattr(m, "otid", None) in otids for m in page.items)


async def send_turn(client: AsyncLetta, conversation_id: str, messages: list[dict], *, agent_id: str,
                    attempts: int, on_wait: Callable[[], None] | None = None,
                    **params: Any) -> letta_client.AsyncStream:
    """POST the turn and return the open SSE stream (token streaming, pings on). `on_wait` is called while a
    lost response's run is waited for."""
    sender = client.with_options(max_retries=0)
    otids = {m["otid"] for m in messages if m.get("otid")}

    async def attempt() -> letta_client.AsyncStream:
        try:
            stream = await sender.conversations.messages.create(
                conversation_id, messages=messages, streaming=True, stream_tokens=True, include_pings=True,
                **params)
            record_letta("success")
            return stream
        except letta_client.APIError as exc:
            if _refused(exc):
                record_letta("retry")
                raise _Retry(exc) from exc
            if _ambiguous(exc):
                if not await _arrived(client, conversation_id, otids, settle=letta_settings().letta_timeout,
                                      on_wait=on_wait):
                    record_letta("retry")
                    raise _Retry(exc) from exc
                error = from_letta(exc, base_url=str(client.base_url), agent_id=agent_id, what="message")
                record_letta(error.run_error_code)
                raise type(error)(f"{error.message} The message reached Letta, so loom did not send it again.") \
                    from exc
            raise

    retrying = AsyncRetrying(stop=stop_after_attempt(max(1, attempts)), wait=_wait,
                             retry=retry_if_exception_type(_Retry), reraise=True)
    try:
        return await retrying(attempt)
    except _Retry as exc:
        error = from_letta(exc.original, base_url=str(client.base_url), agent_id=agent_id, what="message")
        record_letta(error.run_error_code)
        raise error from exc.original
    except letta_client.APIError as exc:
        error = from_letta(exc, base_url=str(client.base_url), agent_id=agent_id, what="message")
        record_letta(error.run_error_code)
        raise error from exc


def cancel_in_background(client: AsyncLetta, conversation_id: str) -> None:
    """Ask Letta to stop the conversation's run (the reader left). Best effort, off the cancelled task."""

    async def cancel() -> None:
        try:
            await client.with_options(max_retries=0, timeout=5.0).conversations.cancel(conversation_id)
        except (letta_client.APIError, LettaError, OSError):
            pass

    task = asyncio.get_running_loop().create_task(cancel())
    _background.add(task)  # keep a reference until it is done
    task.add_done_callback(_background.discard)
