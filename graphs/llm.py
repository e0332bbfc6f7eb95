"""The one way graphs get a chat model: ChatOpenAI against the configured OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import socket
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import openai
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from openai._base_client import make_request_options
from pydantic import model_validator

from loom.graphs.config import graph_settings
from loom.graphs.limits import current_budget
from loom.graphs.local_llm import LocalLLM, start_local_llm

# The embedded demo model (graphs/local_llm.py) is a base model with no turn structure of its own: it
# continues the transcript until stopped client-side.
# llama.cpp ignores `stop` when tools are in the request (the tool grammar ends generation there instead).
# It also imitates the template's other speakers ("Tool result:") and lower-cased ones.
DEMO_STOP: list[str] = ["\nUser:", "\n\n", "\nTool result:", "\nuser:", "\nAssistant:"]

# The demo model ignores `stop` inside a forced tool call and can run on to the token limit.
DEMO_MAX_TOKENS = 256


class _DictStreamingCompletions:
    """`client.chat.completions` whose streams yield the chunks as plain dicts.

    Why: the openai SDK builds a pydantic ChatCompletionChunk per streamed chunk (and first transforms the
    request body through its TypedDict schemas), and langchain-openai immediately dumps each chunk back to a
    dict. Measured in bench/serving.py that round trip was ~45% of loom's CPU per streamed token. Posting
    through the same client (its auth, retries with backoff and jitter, timeouts, SSE decoding and in-stream
    error handling all still apply) with `cast_to=object` skips it; langchain-openai takes dicts as they are.
    """

    def __init__(self, client: openai.AsyncOpenAI):
        self._client = client
        self._completions = client.chat.completions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)

    async def create(self, **payload: Any) -> Any:
        if not payload.get("stream"):
            return await self._completions.create(**payload)
        options = make_request_options(
            extra_headers=payload.pop("extra_headers", None), extra_query=payload.pop("extra_query", None),
            extra_body=payload.pop("extra_body", None), timeout=payload.pop("timeout", openai.NOT_GIVEN),
            security={"bearer_auth": True},
        )
        return await self._client.post("/chat/completions", body=payload, options=options, cast_to=object,
                                       stream=True, stream_cls=openai.AsyncStream[object])


class ChatModel(ChatOpenAI):
    """ChatOpenAI that keeps `reasoning_content` (DeepSeek, vLLM, Qwen, llama.cpp servers send it) and streams
    without the per-chunk pydantic round trip.

    Upstream ChatOpenAI drops non-OpenAI fields; the AG-UI adapter streams this as REASONING events.
    """

    content_timeout: float | None = None  # seconds without a content chunk (LOOM_LLM_TIMEOUT)

    starts_demo: bool = False  # no LLM configured: the first call starts the embedded demo model (Studio)

    @model_validator(mode="after")
    def _stream_dicts(self) -> ChatModel:
        if self.root_async_client is not None and not isinstance(self.async_client, _DictStreamingCompletions):
            self.async_client = _DictStreamingCompletions(self.root_async_client)
        return self

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        """The stream, bounded by silence in content and charged to the run's budget; a stream that ends without
        a finish reason is an error.

        Why a finish reason: a server that closes the connection mid-answer (or sends HTML, a non-streamed body,
        keep-alives only) otherwise ends the stream quietly and the fragment would be stored as the answer.
        Why our own silence timeout: keep-alive comments reset a socket read timeout but produce no chunk; and
        langchain-openai's `stream_chunk_timeout` uses `asyncio.wait_for`, which on Python 3.11 can swallow the
        cancellation of a client that left (when a chunk arrives at the same moment), so the model request ran on
        to its end.
        """
        if self.starts_demo and _demo is None:
            await asyncio.to_thread(_start_demo)
        budget = current_budget.get()
        finished = False
        chunks = super()._astream(*args, **kwargs)
        with budget.model_request() if budget is not None else nullcontext():
            try:
                while True:
                    try:
                        async with asyncio.timeout(self.content_timeout):
                            chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    finished = finished or bool((chunk.generation_info or {}).get("finish_reason"))
                    if budget is not None:
                        budget.charge()
                    yield chunk
            except (AttributeError, TypeError, KeyError) as exc:  # a chunk that is JSON but not a chunk's shape
                raise IncompleteStream(f"The model server sent a chunk loom cannot read ({exc}); nothing of the "
                                       "response was kept.") from exc
            finally:
                await chunks.aclose()  # release the connection now, whatever ended the stream
        if not finished:
            raise IncompleteStream(
                "The model server ended the response without a finish reason (no end of stream, HTML, or not "
                "a chat completion stream); nothing of it was kept.")

    def _convert_chunk_to_generation_chunk(
        self, chunk: dict, default_chunk_class: type, base_generation_info: dict | None
    ) -> ChatGenerationChunk | None:
        generation = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
        choices = chunk.get("choices")
        if generation is not None and choices:
            reasoning = (choices[0].get("delta") or {}).get("reasoning_content")
            if reasoning:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return generation

    def _create_chat_result(self, response: Any, generation_info: dict | None = None) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        raw = response if isinstance(response, dict) else response.model_dump()
        for generation, choice in zip(result.generations, raw.get("choices") or [], strict=False):
            reasoning = (choice.get("message") or {}).get("reasoning_content")
            if reasoning:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return result


class IncompleteStream(Exception):
    run_error_code = "LLM_BAD_RESPONSE"


_http_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _http_client() -> Any:
    """One HTTP connection pool per event loop, on openai's aiohttp transport.

    Why: with the default httpx transport, per-chunk reads (h11 parsing, anyio timeouts, pool checks) were
    the largest share of loom's CPU per run in bench/serving.py; aiohttp reads the stream in large chunks.
    """
    loop = asyncio.get_running_loop()
    if loop not in _http_clients:
        _http_clients[loop] = openai.DefaultAioHttpClient(timeout=graph_settings().llm_timeout)
    return _http_clients[loop]


async def close_http_clients() -> None:
    """Close the connection pool of the running event loop (server shutdown)."""
    client = _http_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def chat_model(model: str | None = None, temperature: float | None = None, max_tokens: int | None = None,
               max_retries: int | None = None) -> ChatModel:
    """A streaming chat model for the configured endpoint; cached per setting and event loop.

    `max_retries` overrides LOOM_LLM_MAX_RETRIES (0: the caller retries, e.g. within its own deadline).
    """
    return _chat_model(model, temperature, max_tokens, max_retries, _http_client())


@lru_cache(maxsize=64)
def _chat_model(model: str | None, temperature: float | None, max_tokens: int | None, max_retries: int | None,
                http_client: Any) -> ChatModel:
    settings = graph_settings()
    if is_demo_model():  # deterministic and bounded: the tiny model wanders otherwise
        max_tokens = max_tokens or DEMO_MAX_TOKENS
        temperature = 0.0 if temperature is None else temperature
    return ChatModel(
        model=model or settings.llm_model,
        base_url=settings.llm_base_url or _demo_url(),
        starts_demo=settings.llm_base_url is None,
        api_key=settings.llm_api_key,
        temperature=temperature,
        max_tokens=max_tokens,
        streaming=True,
        stream_usage=True,
        timeout=settings.llm_timeout,
        content_timeout=settings.llm_timeout,
        stream_chunk_timeout=None,  # replaced by content_timeout (see ChatModel._astream)
        max_retries=settings.llm_max_retries if max_retries is None else max_retries,
        stop=DEMO_STOP if is_demo_model() else None,
        http_async_client=http_client,
    )


def is_demo_model() -> bool:
    """Whether the embedded demo model answers: `loom serve` started it, or nothing else is configured."""
    settings = graph_settings()
    return settings.demo_model or settings.llm_base_url is None


# ------------------------------------------------------------------ the demo model, outside `loom serve`
# `loom serve` starts the demo model itself when no LLM is configured. A graph loaded anywhere else (LangGraph
# Studio through `langgraph dev`, a notebook) starts it here instead: once per process, on the first model
# call, in a worker thread (it takes a few seconds to load, and `langgraph dev` refuses blocking calls on its
# event loop). The port is chosen up front so every model built before then already points at it.

_demo: LocalLLM | None = None
_demo_port: int | None = None
_demo_lock = threading.Lock()


def _demo_url() -> str:
    global _demo_port
    if _demo_port is None:
        _demo_port = graph_settings().local_llm_port or _free_loopback_port()
    return f"http://127.0.0.1:{_demo_port}/v1"


def _start_demo() -> None:
    global _demo
    with _demo_lock:
        if _demo is None:
            _demo_url()
            _demo = start_local_llm(port=_demo_port, threads=graph_settings().local_llm_threads)


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
