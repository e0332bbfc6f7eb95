"""Letta failures as specific errors. Each carries the RUN_ERROR code a client sees (`run_error_code`), so the
server classifies them without knowing about Letta (graphs/errors.py reads the attribute)."""

from __future__ import annotations

import httpx
import letta_client


class LettaError(Exception):
    run_error_code = "LETTA_ERROR"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class LettaNotConfigured(LettaError):
    run_error_code = "LETTA_NOT_CONFIGURED"


class LettaUnreachable(LettaError):
    run_error_code = "LETTA_UNREACHABLE"


class LettaAuthError(LettaError):
    run_error_code = "LETTA_AUTH"


class LettaAgentNotFound(LettaError):
    run_error_code = "LETTA_AGENT_NOT_FOUND"


class LettaNotFound(LettaError):
    run_error_code = "LETTA_NOT_FOUND"


class LettaBusy(LettaError):
    run_error_code = "LETTA_BUSY"


class LettaPendingApproval(LettaError):
    run_error_code = "LETTA_PENDING_APPROVAL"


class LettaRateLimited(LettaError):
    run_error_code = "LETTA_RATE_LIMITED"


class LettaServerError(LettaError):
    run_error_code = "LETTA_SERVER_ERROR"


class LettaBadRequest(LettaError):
    run_error_code = "LETTA_BAD_REQUEST"


class LettaTimeout(LettaError):
    run_error_code = "LETTA_TIMEOUT"


class LettaStreamError(LettaError):
    """The agent's run failed after the stream began: an error event, a broken or truncated stream."""

    run_error_code = "LETTA_STREAM_ERROR"


class LettaStopped(LettaError):
    """The agent stopped for a reason that is a failure (error, cancelled, ...) without sending details."""

    run_error_code = "LETTA_STOPPED"


def detail(exc: letta_client.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        text = body.get("detail") or body.get("message")
        if text:
            return str(text)[:300]
    return str(exc.message)[:300]


def never_sent(exc: BaseException) -> bool:
    """Whether the request certainly never reached the server (no connection was made)."""
    return isinstance(exc, letta_client.APIConnectionError) and isinstance(
        exc.__cause__, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def from_letta(exc: BaseException, *, base_url: str, agent_id: str | None = None,
               what: str = "request") -> LettaError:
    """The specific error for an exception letta-client (or httpx, mid-stream) raised."""
    if isinstance(exc, LettaError):
        return exc
    if never_sent(exc):
        return LettaUnreachable(f"Cannot reach the Letta server at {base_url}: {exc.__cause__ or exc}. "
                                "Check LOOM_LETTA_BASE_URL.")
    if isinstance(exc, (letta_client.APITimeoutError, httpx.TimeoutException)):
        return LettaTimeout(f"The Letta server at {base_url} went silent during the {what} (LOOM_LETTA_TIMEOUT).")
    if isinstance(exc, letta_client.APIConnectionError):
        return LettaStreamError(f"The connection to the Letta server broke during the {what}: {exc.__cause__ or exc}")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return LettaStreamError("The Letta server closed the stream in the middle of a response.")
    if not isinstance(exc, letta_client.APIStatusError):
        return LettaError(f"Letta {what} failed: {type(exc).__name__}: {exc}")
    status, text = exc.status_code, detail(exc)
    if status == 200:  # an `event: error` inside the stream
        body = exc.body if isinstance(exc.body, dict) else {}
        kind = body.get("error_type") or "error"
        message = str(body.get("message") or text)
        if message.startswith("CONFLICT"):  # Letta refuses a turn inside a 200 stream, not with a 409
            return _conflict(message)
        extra = str(body.get("detail") or "")  # Letta's message is generic ("An error occurred with the LLM
        if extra and extra not in message:  # request."); the detail names the cause
            message = f"{message} {extra[:300]}"
        return LettaStreamError(f"The Letta agent's run failed ({kind}): {message}")
    if status in (401, 403):
        return LettaAuthError(f"The Letta server refused the API key ({status}): {text}. Check LOOM_LETTA_API_KEY.")
    if status == 404:
        if agent_id and "agent" in text.lower():
            return LettaAgentNotFound(f"The Letta server has no agent {agent_id!r} ({text}).")
        return LettaNotFound(f"The Letta server does not know this {what} (404): {text}")
    if status == 409:
        return _conflict(text)
    if status == 429:
        return LettaRateLimited(f"The Letta server is rate limiting requests (429): {text}. Try again shortly.")
    if status >= 500:
        return LettaServerError(f"The Letta server answered HTTP {status}: {text}")
    return LettaBadRequest(f"The Letta server rejected the {what} ({status}): {text}")


def _conflict(text: str) -> LettaError:
    """A refused turn: the agent waits on a tool approval or a client tool's result, or another turn runs."""
    if "approval" in text.lower():
        return LettaPendingApproval(f"The Letta agent is waiting for a tool approval or a tool result: {text}")
    return LettaBusy(f"The Letta conversation is busy with another request (409): {text}. Try again shortly.")
