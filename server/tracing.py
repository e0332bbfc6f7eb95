"""OpenTelemetry traces, on when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set.

Each run is a `loom.run` span; its model calls and tool calls (and the graph's chains) are child spans made by
OpenInference's LangChain instrumentation (`openinference-instrumentation-langchain`, the `otel` extra). Every
span carries `loom.run_id`. Spans go over OTLP/HTTP (protobuf) to the endpoint, which the OTLP exporter reads
from the standard OTEL_* variables itself (headers, timeout, service name through OTEL_SERVICE_NAME).

Prompts and answers stay out of spans unless LOOM_OTEL_CONTENT=true. The user id in the spans' LangChain
metadata follows LOOM_OPENPIPE_USER_ID, as in the run log line: plain, hashed or off. LangSmith tracing
(LANGSMITH_TRACING, LANGSMITH_API_KEY, LANGSMITH_PROJECT) is LangChain's own and works alongside, unchanged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loom.server.observe import logged_user

log = logging.getLogger("loom.server")

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
CONTENT_ENV = "LOOM_OTEL_CONTENT"

_tracer: Any = None
_provider: Any = None
_instrumentor: Any = None
_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("loom_trace_run_id", default=None)


def wanted() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_ENVS)


def configure(exporter: Any = None, user_ids: str = "plain") -> bool:
    """Install the tracer provider and the LangChain instrumentation once per process; False when off.

    `exporter`: a span exporter to use instead of OTLP/HTTP (the tests' in-memory one). `user_ids`: plain,
    hashed or off (LOOM_OPENPIPE_USER_ID), for the user id in span metadata.
    """
    global _tracer, _provider, _instrumentor
    if _tracer is not None:
        return True
    if exporter is None and not wanted():
        return False
    try:
        from openinference.instrumentation import TraceConfig
        from openinference.instrumentation.langchain import LangChainInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing is off: %s (install loom[otel])", exc)
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                       "loom")}))
    provider.add_span_processor(_RunIdProcessor())
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # sent off the request path
        provider.add_span_processor(BatchSpanProcessor(_UserIdPolicy(OTLPSpanExporter(), user_ids)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(_UserIdPolicy(exporter, user_ids)))
    content = os.environ.get(CONTENT_ENV, "").strip().lower() in ("1", "true", "yes")
    _instrumentor = LangChainInstrumentor()
    _instrumentor.instrument(tracer_provider=provider, config=TraceConfig(
        hide_inputs=not content, hide_outputs=not content, hide_llm_invocation_parameters=not content))
    _tracer, _provider = provider.get_tracer("loom"), provider
    return True


def shutdown() -> None:
    """Flush the spans still queued and remove the instrumentation (blocking: call it off the event loop)."""
    global _tracer, _provider, _instrumentor
    if _tracer is None:
        return
    _instrumentor.uninstrument()
    _provider.shutdown()
    _tracer = _provider = _instrumentor = None


@contextmanager
def run_span(graph: str, thread_id: str, run_id: str) -> Iterator[Any]:
    """The run's span, current while the run streams (its model and tool spans become its children)."""
    if _tracer is None:
        yield None
        return
    token = _run_id.set(run_id)
    try:
        with _tracer.start_as_current_span("loom.run", attributes={
                "loom.graph": graph, "loom.thread_id": thread_id, "loom.run_id": run_id}) as span:
            yield span
    finally:
        try:
            _run_id.reset(token)
        except ValueError:  # closed from another context (a generator finalised elsewhere): nothing to undo
            pass


class _RunIdProcessor:
    """Stamps `loom.run_id` on every span started inside a run (the instrumentation's spans too)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if (run_id := _run_id.get()) is not None:
            span.set_attribute("loom.run_id", run_id)

    def on_end(self, span: Any) -> None:
        return None

    def _on_ending(self, span: Any) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _UserIdPolicy:
    """A span exporter that shows the user id in span metadata as the policy says, then hands spans on.

    LangChain's run metadata (which OpenInference puts on every span as JSON) holds the caller's `user_id`; a
    span cannot be changed once ended, so the spans are copied on their way out."""

    def __init__(self, inner: Any, mode: str):
        from opentelemetry.sdk.trace import ReadableSpan  # the otel extra: imported once tracing is on

        self.inner, self.mode, self._span = inner, mode, ReadableSpan

    def export(self, spans: Any) -> Any:
        if self.mode != "plain":
            spans = [self._scrubbed(span) for span in spans]
        return self.inner.export(spans)

    def _scrubbed(self, span: Any) -> Any:
        raw = (span.attributes or {}).get("metadata")
        try:
            metadata = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            return span
        if not isinstance(metadata, dict) or not isinstance(metadata.get("user_id"), str):
            return span
        if (shown := logged_user(metadata["user_id"], self.mode)) is None:
            del metadata["user_id"]
        else:
            metadata["user_id"] = shown
        return self._span(name=span.name, context=span.context, parent=span.parent, resource=span.resource,
                          attributes={**span.attributes, "metadata": json.dumps(metadata)}, events=span.events,
                          links=span.links, kind=span.kind, status=span.status, start_time=span.start_time,
                          end_time=span.end_time, instrumentation_scope=span.instrumentation_scope)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
