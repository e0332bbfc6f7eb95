"""1,000 clients walk away mid-answer: every one cancels its upstream model request within 200 ms, as the
scripted LLM server's own request log records it (when it saw the connection close)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import pytest

from tests.conftest import new_id

RUNS = 1000
CONCURRENCY = 4
BUDGET_S = 0.2


async def _walk_away(port: int, marker: str) -> float:
    """One run: read until the model's first token, then close the connection. Returns when it left."""
    body = json.dumps({"threadId": new_id(), "runId": new_id(),
                       "messages": [{"id": new_id(), "role": "user", "content": marker}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /agents/agent HTTP/1.1\r\nhost: loom\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n" % len(body) + body)
    seen = b""
    while b"TEXT_MESSAGE_CONTENT" not in seen:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, f"loom closed the stream before the first token: {seen[-500:]!r}"
        seen = seen[-100:] + chunk
    writer.close()
    return time.time()


async def _soak(port: int) -> dict[str, float]:
    left: dict[str, float] = {}
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            marker = f"soak-{i}"
            left[marker] = await _walk_away(port, marker)

    await asyncio.gather(*(one(i) for i in range(RUNS)))
    return left


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_thousand_disconnects_each_cancel_the_upstream_request_within_200ms(loom_sqlite, llm):
    # Each answer would stream for ~3 s: only a cancelled request ends sooner.
    llm.script({"text": " ".join(f"w{i}" for i in range(600)), "token_delay_ms": 5, "repeat": True})
    started = time.monotonic()
    left = asyncio.run(_soak(loom_sqlite.port))
    took = time.monotonic() - started
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = llm.requests()
        if len(records) >= RUNS and all(r["ended_at"] for r in records):
            break
        time.sleep(0.1)
    latency, late = [], []
    for record in records:
        marker = record["body"]["messages"][-1]["content"]
        assert record["outcome"] == "disconnected", record
        latency.append(record["ended_at"] - left[marker])
        if latency[-1] > BUDGET_S:
            late.append((marker, round(latency[-1], 3)))
    latency.sort()
    summary = {"runs": len(records), "seconds": round(took, 1), "p50_ms": round(statistics.median(latency) * 1000, 1),
               "p99_ms": round(latency[int(len(latency) * 0.99)] * 1000, 1), "max_ms": round(latency[-1] * 1000, 1)}
    print("disconnect soak:", summary)
    assert len(records) == RUNS and {r["body"]["messages"][-1]["content"] for r in records} == set(left)
    assert not late, f"{len(late)} of {RUNS} upstream requests outlived their client by more than 200 ms: " \
                     f"{late[:10]}; {summary}"
