"""Failures of a run, classified into the codes a client sees in RUN_ERROR."""

from __future__ import annotations

import socket

import httpx
import openai

try:  # the openai SDK moved to httpx2; mid-stream transport errors surface from whichever it uses
    import httpx2

    _STREAM_BROKEN = (httpx.RemoteProtocolError, httpx.ReadError, httpx2.RemoteProtocolError, httpx2.ReadError)
    _STREAM_STALLED = (httpx.TimeoutException, httpx2.TimeoutException, TimeoutError)
except ImportError:  # pragma: no cover
    _STREAM_BROKEN = (httpx.RemoteProtocolError, httpx.ReadError)
    _STREAM_STALLED = (httpx.TimeoutException, TimeoutError)

LLM_UNREACHABLE = "LLM_UNREACHABLE"
LLM_AUTH = "LLM_AUTH"
LLM_RATE_LIMITED = "LLM_RATE_LIMITED"
LLM_TIMEOUT = "LLM_TIMEOUT"
LLM_BAD_RESPONSE = "LLM_BAD_RESPONSE"
INTERNAL = "INTERNAL_ERROR"


def classify(exc: BaseException) -> tuple[str, str]:
    """(code, readable message) for an exception that ended a run.

    The openai client has already retried what is safe to retry (connection errors, 408/409/429/5xx) with
    exponential backoff and jitter before any token arrived; what reaches here is final.
    """
    code = getattr(exc, "run_error_code", None)
    if isinstance(code, str):  # an adapter's own specific error (adapters/letta/errors.py: LETTA_* codes)
        return code, str(exc)
    chain = _chain(exc)
    if any(isinstance(e, (ConnectionRefusedError, socket.gaierror)) for e in chain):
        # Checked first: openai's aiohttp transport reports a refused connection as a connect *timeout*.
        return LLM_UNREACHABLE, f"Cannot reach the model server: {chain[-1]}. Check LOOM_LLM_BASE_URL."
    if isinstance(exc, openai.APIConnectionError) and any(isinstance(e, ConnectionResetError) for e in chain):
        # Before any response (a request error, not a broken stream): the server or a proxy refused it.
        return LLM_UNREACHABLE, "The model server reset the connection before answering. Check LOOM_LLM_BASE_URL."
    if any(isinstance(e, _STREAM_BROKEN) for e in chain):
        return LLM_BAD_RESPONSE, "The model server closed the stream in the middle of a response."
    if isinstance(exc, openai.APITimeoutError):
        return LLM_TIMEOUT, "The model server went silent for longer than LOOM_LLM_TIMEOUT allows."
    if isinstance(exc, openai.APIConnectionError):
        return LLM_UNREACHABLE, f"Cannot reach the model server: {exc.__cause__ or exc}. Check LOOM_LLM_BASE_URL."
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return LLM_AUTH, f"The model server refused the API key ({exc.status_code}). Check LOOM_LLM_API_KEY."
    if isinstance(exc, openai.RateLimitError):
        return LLM_RATE_LIMITED, "The model server is rate limiting requests (429); try again shortly."
    if isinstance(exc, openai.NotFoundError):
        return LLM_BAD_RESPONSE, f"The model server does not know this model or path (404): {_detail(exc)}"
    if isinstance(exc, openai.APIStatusError):
        return LLM_BAD_RESPONSE, f"The model server answered HTTP {exc.status_code}: {_detail(exc)}"
    if isinstance(exc, openai.APIError):  # an error event inside a 200 stream (llama.cpp, vLLM do this)
        return LLM_BAD_RESPONSE, f"The model server reported an error mid-stream: {str(exc.message)[:300]}"
    if isinstance(exc, _STREAM_STALLED):
        return LLM_TIMEOUT, "The model server went silent for longer than LOOM_LLM_TIMEOUT allows."
    if isinstance(exc, (openai.APIResponseValidationError, ValueError)) and _from_llm(exc):
        return LLM_BAD_RESPONSE, f"The model server sent a response loom cannot read: {exc}"
    return INTERNAL, f"The run failed: {type(exc).__name__}: {exc}"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes: the openai SDK wraps transport errors (a broken stream too)."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(nxt)
    return chain


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message") if isinstance(
            body.get("error", {}), dict) else body.get("message")
        if message:
            return str(message)[:300]
    return str(exc.message)[:300]


def _from_llm(exc: BaseException) -> bool:
    """Whether a parsing error came out of the openai / langchain-openai stack."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("openai", "langchain_openai", "json")):
            return True
        tb = tb.tb_next
    return isinstance(exc, openai.APIResponseValidationError)
