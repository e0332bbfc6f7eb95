"""OpenTelemetry traces: runs, model calls and tool calls as spans carrying the run id, without content.

In-process with the SDK's in-memory exporter; end to end, `loom serve` exporting over OTLP/HTTP (protobuf) to a
loopback receiver written here. Needs the `otel` extra (`pip install -e '.[otel]'`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openinference.instrumentation.langchain", reason="the otel extra is not installed")

from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from loom.server import tracing  # noqa: E402
from tests.conftest import LoomServer, new_id, user  # noqa: E402

SECRET = "my passport number is 4711"


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return f"found {query}"


def test_run_model_and_tool_spans_carry_the_run_id_in_memory(llm):
    exporter = InMemorySpanExporter()
    assert tracing.configure(exporter=exporter)
    try:
        llm.script({"text": "The answer."})
        model = ChatOpenAI(base_url=llm.url, api_key="test-key", model="scripted", streaming=True)

        async def run() -> None:
            with tracing.run_span("agent", "thread-1", "run-1") as span:
                await model.ainvoke(SECRET)
                await lookup.ainvoke({"query": SECRET})
                span.set_attribute("loom.outcome", "success")

        asyncio.run(run())
    finally:
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.name == "loom.run"]
    assert root.attributes["loom.run_id"] == "run-1" and root.attributes["loom.outcome"] == "success"
    kinds = {s.attributes.get("openinference.span.kind") for s in spans if s is not root}
    assert {"LLM", "TOOL"} <= kinds, kinds
    for span in spans:
        assert span.attributes["loom.run_id"] == "run-1", span.name
        assert span.context.trace_id == root.context.trace_id
        assert not any(SECRET in str(v) for v in span.attributes.values()), (span.name, dict(span.attributes))


class OtlpReceiver:
    """A stand-in OTLP/HTTP collector on loopback: keeps the spans of every POST /v1/traces."""

    def __init__(self):
        self.spans: list = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 — http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(span) -> dict:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def test_loom_serve_exports_spans_over_otlp_http(llm, tmp_path):
    receiver = OtlpReceiver()
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL=llm.url, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
                        OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SERVICE_NAME="loom-test",
                        LOOM_API_KEYS="k-alice=user:alice-4711", LOOM_OPENPIPE_USER_ID="hashed").start()
    try:
        call = {"id": "call_1", "name": "slow_lookup", "arguments": {"seconds": 0}}
        llm.script({"tool_calls": [call]}, {"text": "Done."})
        run_id = new_id()
        events = server.run("agent", [user(SECRET)], runId=run_id, headers={"authorization": "Bearer k-alice"})
        assert events[-1]["type"] == "RUN_FINISHED"
        deadline = time.monotonic() + 10
        while not any(s.name == "loom.run" for s in receiver.spans) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
        receiver.stop()
    spans = [s for s in receiver.spans if attributes(s).get("loom.run_id") == run_id]
    [root] = [s for s in spans if s.name == "loom.run"]
    assert attributes(root)["loom.graph"] == "agent" and attributes(root)["loom.outcome"] == "success"
    kinds = [attributes(s).get("openinference.span.kind") for s in spans]
    assert kinds.count("LLM") == 2 and kinds.count("TOOL") == 1, kinds
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert not any(SECRET in str(a.value) for s in receiver.spans for a in s.attributes)
    # The user id is shown as LOOM_OPENPIPE_USER_ID says (hashed here), as in the run's log line.
    metadata = [json.loads(attributes(s)["metadata"]) for s in spans if "metadata" in attributes(s)]
    assert metadata and {m.get("user_id") for m in metadata} == {hashlib.sha256(b"alice-4711").hexdigest()[:16]}
    assert not any("alice-4711" in str(a.value) for s in receiver.spans for a in s.attributes)
