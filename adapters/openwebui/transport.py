"""Talking to loom over HTTP: the agent list, one run's event stream, and one error class per way it can fail.

Retries (exponential backoff with jitter) happen only before a response has started: once loom answers, the
run exists, and sending it again would run the graph twice.
"""

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

# Worth another attempt before anything started: loom restarting (refused, reset) or a run of this chat still
# closing (409), or a proxy in front of loom that is overloaded.
RETRY_STATUSES = {409, 429, 502, 503, 504}
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                httpx.WriteError)


class LoomError(Exception):
    """A failure the user sees: `title` heads the notification, the message says what happened and what to do."""

    title = "loom failed"


class LoomUnreachable(LoomError):
    title = "loom is unreachable"

    def __init__(self, url: str, reason: str):
        super().__init__(f"Cannot reach loom at {url} ({reason}). Is `loom serve` running there? The pipe's "
                         "Loom URL valve says where it looks.")


class LoomHTTPError(LoomError):
    title = "loom refused the request"

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        self.status, self.code, self.field = status, code, field
        if status == 401:
            self.title = "loom refused the API key"
            text = (f"loom refused the API key (HTTP 401, {code}): {message} Set the pipe's API key valve to a "
                    "proxy key from the server's LOOM_API_KEYS (KEY=proxy).")
        elif status == 403:
            self.title = "loom does not allow this"
            text = f"loom does not allow this (HTTP 403, {code}): {message}"
        elif status == 404:
            self.title = "loom has no such agent"
            text = f"loom has no such agent (HTTP 404, {code}): {message}"
        elif status == 409:
            self.title = "loom is busy with this chat"
            text = (f"loom is still busy with this chat (HTTP 409, {code}): {message} Wait a moment and send "
                    "the message again.")
        elif status in (413, 422):
            self.title = "loom rejected the request"
            where = f" at {field}" if field else ""
            text = f"loom rejected the request (HTTP {status}, {code}{where}): {message}"
        else:
            self.title = f"loom answered HTTP {status}"
            text = f"loom answered HTTP {status} ({code}): {message}"
        super().__init__(text)


class LoomBadEvent(LoomError):
    title = "loom sent an unreadable event"


class LoomTimeout(LoomError):
    title = "loom went silent"

    def __init__(self, seconds: float):
        super().__init__(f"loom sent nothing for {seconds:g} s, so the pipe gave up on the run (the Timeout "
                         "valve sets how long it waits).")


class LoomStreamCut(LoomError):
    title = "The connection to loom broke"

    def __init__(self, detail: str):
        super().__init__(f"The connection to loom closed before the run finished ({detail}).")


class LoomRunError(LoomError):
    title = "The run failed"

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(f"The run failed ({code}): {message}")


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 8.0) -> float:
    """Exponential backoff with jitter: half the step fixed, half random, so retries of many chats spread out."""
    step = min(cap, base * 2**attempt)
    return step / 2 + random.uniform(0, step / 2)


def _headers(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _reason(exc: BaseException) -> str:
    """The cause in a few words: httpx reports a refused connection as "All connection attempts failed"."""
    chain = [exc]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(cause)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"unknown host: {chain[-1]}"
    return str(exc) or type(exc).__name__


async def _http_error(response: httpx.Response) -> LoomHTTPError:
    """loom's errors are `{"error": {code, message, field?}}`; anything else (a proxy's page) is quoted."""
    body = await response.aread()
    try:
        error = json.loads(body)["error"]
        return LoomHTTPError(response.status_code, str(error.get("code", "error")), str(error.get("message", "")),
                             error.get("field"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return LoomHTTPError(response.status_code, "http_error", body.decode(errors="replace")[:300].strip())


async def list_agents(url: str, api_key: str, timeout: float) -> list[dict]:
    """`GET /agents`: [{name, description, contextSchema}]."""
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(f"{url}/agents", headers=_headers(api_key))
            if response.status_code != 200:
                raise await _http_error(response)
            return response.json()
    except httpx.TimeoutException:
        raise LoomTimeout(timeout) from None
    except httpx.TransportError as exc:
        raise LoomUnreachable(url, _reason(exc)) from None


async def run_task(url: str, api_key: str, task: str, messages: list[dict], user_id: str | None,
                   opt_out: bool, timeout: float) -> str:
    """`POST /tasks/{task}`: one model call for a background task (a title, tags, follow-ups); its text."""
    headers = {**_headers(api_key), **({"x-loom-user": user_id} if user_id else {})}
    body: dict = {"messages": messages, **({"openpipe": {"optOut": True}} if opt_out else {})}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(f"{url}/tasks/{task}", json=body, headers=headers)
            if response.status_code != 200:
                raise await _http_error(response)
            return str(response.json().get("content") or "")
    except httpx.TimeoutException:
        raise LoomTimeout(timeout) from None
    except httpx.TransportError as exc:
        raise LoomUnreachable(url, _reason(exc)) from None


async def run_events(client: httpx.AsyncClient, url: str, api_key: str, graph: str, run_input: dict,
                     retries: int, on_retry: Callable[[str], Awaitable[None]] | None = None
                     ) -> AsyncIterator[dict]:
    """POST one run and yield its AG-UI events (dicts). Raises a LoomError; RUN_ERROR becomes LoomRunError.

    Closing this generator closes the connection, and loom cancels the run when its client leaves.
    """
    request = client.build_request("POST", f"{url}/agents/{graph}", json=run_input,
                                   headers={**_headers(api_key), "accept": "text/event-stream"})
    response = None
    for attempt in range(retries + 1):
        failure: LoomError
        try:
            response = await client.send(request, stream=True)
        except RETRY_ERRORS as exc:
            failure = LoomUnreachable(url, _reason(exc))
        except httpx.TimeoutException:  # loom accepted the request but never answered: the run may exist
            raise LoomTimeout(client.timeout.read or 0) from None
        else:
            if response.status_code == 200:
                break
            failure = await _http_error(response)
            await response.aclose()
            if failure.status not in RETRY_STATUSES:
                raise failure
        if attempt == retries:
            raise failure
        delay = backoff_delay(attempt)
        if on_retry is not None:
            await on_retry(f"{failure.title}; trying again in {delay:.1f} s ({attempt + 1} of {retries})…")
        await asyncio.sleep(delay)

    try:
        finished = False
        async for event in _sse_events(response):
            kind = event.get("type")
            if kind == "RUN_ERROR":
                raise LoomRunError(str(event.get("code") or "ERROR"), str(event.get("message") or ""))
            finished = finished or kind == "RUN_FINISHED"
            yield event
        if not finished:
            raise LoomStreamCut("the stream ended without RUN_FINISHED")
    except httpx.ReadTimeout:
        raise LoomTimeout(client.timeout.read or 0) from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise LoomStreamCut(_reason(exc)) from None
    finally:
        await response.aclose()


async def _sse_events(response: httpx.Response) -> AsyncIterator[dict]:
    """Server-Sent Events: `data:` lines up to a blank line make one event (loom sends one line per event)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield _parse("\n".join(data))
            data = []
    if data:
        yield _parse("\n".join(data))


def _parse(data: str) -> dict:
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise LoomBadEvent(f"loom sent an event that is not valid JSON ({exc}): {data[:120]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise LoomBadEvent(f"loom sent something that is not an AG-UI event: {data[:120]!r}")
    return event
