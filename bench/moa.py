"""MoA benchmark: time to the aggregator's first token against the ideal critical path; a hung proposer's cost.

    .venv/bin/python -m bench.moa [--runs 10] [--out FILE]      # ~30 s on 2 cores

Processes (loopback only): the mock LLM (`tests.llm_server`) and `loom serve` (SQLite), as in bench/serving.py.
Mock models: proposers `p100`, `p300`, `p500` send their 20-token answer after 100/300/500 ms; the aggregator `agg`
after 50 ms, then 20 tokens 5 ms apart; `hang` never answers.

critical path  2 layers of p100/p300/p500. Per run: TTFT = request start (before connect) -> first
               TEXT_MESSAGE_CONTENT at the client (a raw asyncio client, fresh connection); ideal = for each layer
               the slowest proposer's duration + the aggregator's time to first byte, both from the mock's request
               log of that same run. Target: TTFT <= 1.05 x ideal + 20 ms per layer (medians over the runs).
hung proposer  1 layer of p100/p300/hang, proposer_deadline 1 s. Layer time = STEP_STARTED -> STEP_FINISHED of
               "layer 1" at the client; the mock logs when loom dropped the hung request. Target: <= deadline + 50 ms.
Absolute times drift on a shared machine; both targets compare figures of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # `python bench/moa.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import Server, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
LAYERS, DEADLINE_S = 2, 1.0
TOKENS = " ".join(f"w{i}" for i in range(20))
MODELS = {"p100": {"latency_ms": 100}, "p300": {"latency_ms": 300}, "p500": {"latency_ms": 500},
          "agg": {"latency_ms": 50, "token_delay_ms": 5}, "hang": {"hang": True}}


def body(proposers: list[str], layers: int) -> bytes:
    context = {"proposers": [{"model": m} for m in proposers], "aggregator_model": "agg", "layers": layers,
               "proposer_deadline": DEADLINE_S}
    return json.dumps({"threadId": str(uuid.uuid4()), "runId": str(uuid.uuid4()),
                       "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": "Explain MoA."}],
                       "forwardedProps": {"context": context}}).encode()


async def timed_run(port: int, payload: bytes) -> tuple[float, list[tuple[float, dict]]]:
    """(wall-clock start, [(seconds since start, event)]): every SSE event stamped when its bytes arrived."""
    wall, t0 = time.time(), time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"POST /agents/moa HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: "
                 b"text/event-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (HOST.encode(), len(payload), payload))
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"loom answered {head[:200]!r}")
    chunked, events, buf = b"chunked" in head.lower(), [], b""
    while True:
        if chunked:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = (await reader.readexactly(size + 2))[:-2]
        else:
            data = await reader.read(65536)
        if not data:
            break
        now = time.perf_counter() - t0
        buf += data
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            if frame.startswith(b"data: "):
                events.append((now, json.loads(frame[6:])))
    writer.close()
    return wall, events


def first(events: list[tuple[float, dict]], kind: str, step: str | None = None) -> float:
    return next(t for t, e in events if e["type"] == kind and (step is None or e.get("stepName") == step))


class Bench:
    def __init__(self, runs: int):
        self.runs, self.seen = runs, 0
        self.tmp = Path(tempfile.mkdtemp(prefix="loom-bench-moa-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "BENCH_", "OPENAI_"))}
        env["PYTHONUNBUFFERED"] = "1"
        mock_port, loom_port = free_port(), free_port()
        self.mock = Server("mock", [str(VENV_BIN / "python"), "-m", "tests.llm_server", "--host", HOST, "--port",
                                    str(mock_port), "--log-limit", "1000"],
                           port=mock_port, ready_path="/v1/models", cwd=REPO, env=env, log_dir=self.tmp)
        self.loom = Server("loom", [str(VENV_BIN / "loom"), "serve", "--port", str(loom_port)], port=loom_port,
                           ready_path="/health", cwd=REPO, log_dir=self.tmp, env={
                               **env, "LOOM_LLM_BASE_URL": f"{self.mock.url}/v1", "LOOM_LLM_MODEL": "agg",
                               "LOOM_DATABASE_URL": f"sqlite:///{self.tmp}/bench.db"})

    def new_requests(self) -> list[dict]:
        """The mock's chat requests since the last call."""
        records = [r for r in json.loads(self.mock.get("/_requests")) if r["id"] and r["id"] > self.seen]
        self.seen = max([r["id"] for r in records], default=self.seen)
        return records

    async def critical_path(self) -> dict:
        rows = []
        for i in range(self.runs + 2):  # two warm-up runs
            wall, events = await timed_run(self.loom.port, body(["p100", "p300", "p500"], LAYERS))
            requests = self.new_requests()
            if i < 2:
                continue
            ttft = first(events, "TEXT_MESSAGE_CONTENT")
            [agg] = [r for r in requests if r["model"] == "agg"]
            layers = {}
            for r in requests:  # layer n > 1 proposers are the ones prompted with the answers (a system message)
                if r["model"] != "agg":
                    layers.setdefault(2 if r["body"]["messages"][0]["role"] == "system" else 1, []).append(r)
            slowest = [max(r["ended_at"] - r["started_at"] for r in layers[n]) for n in sorted(layers)]
            agg_ttfb = agg["first_byte_at"] - agg["started_at"]
            ideal = sum(slowest) + agg_ttfb
            rows.append({
                "ttft_ms": ttft * 1000, "ideal_ms": ideal * 1000, "ratio": ttft / ideal,
                "overhead_ms": (ttft - ideal) * 1000, "slowest_per_layer_ms": [s * 1000 for s in slowest],
                "aggregator_ttfb_ms": agg_ttfb * 1000,
                # where loom's overhead sits: before layer 1, between layers, before the aggregator, after it
                "to_layer1_ms": (min(r["started_at"] for r in layers[1]) - wall) * 1000,
                "between_layers_ms": (min(r["started_at"] for r in layers[2])
                                      - max(r["ended_at"] for r in layers[1])) * 1000,
                "to_aggregator_ms": (agg["started_at"] - max(r["ended_at"] for r in layers[2])) * 1000,
                "first_byte_to_client_ms": (wall + ttft - agg["first_byte_at"]) * 1000,
            })
        return summarize(rows)

    async def hung_proposer(self) -> dict:
        rows = []
        for _ in range(max(3, self.runs // 3)):
            _, events = await timed_run(self.loom.port, body(["p100", "p300", "hang"], 1))
            [hung] = [r for r in self.new_requests() if r["model"] == "hang"]
            rows.append({
                "layer_ms": (first(events, "STEP_FINISHED", "layer 1") - first(events, "STEP_STARTED", "layer 1"))
                * 1000,
                "hung_request_ms": (hung["ended_at"] - hung["started_at"]) * 1000, "hung_outcome": hung["outcome"],
                "ttft_ms": first(events, "TEXT_MESSAGE_CONTENT") * 1000,
                "failed": [e["value"]["code"] for _, e in events
                           if e.get("name") == "loom.moa.proposer" and e["value"]["status"] == "failed"],
            })
        return summarize(rows)

    async def run(self) -> dict:
        for model, behaviour in MODELS.items():
            self.mock.post_json(f"/_models/{model}", json.dumps({"text": TOKENS, **behaviour}).encode())
        return {"critical_path": await self.critical_path(), "hung_proposer": await self.hung_proposer()}


def summarize(rows: list[dict]) -> dict:
    numeric = [k for k, v in rows[0].items() if isinstance(v, float)]
    return {"median": {k: statistics.median(r[k] for r in rows) for k in numeric},
            "max": {k: max(r[k] for r in rows) for k in numeric}, "runs": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="measured critical-path runs (default 10)")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/moa-<time>.json)")
    args = p.parse_args(argv)
    bench = Bench(args.runs)
    out = args.out or REPO / "bench" / "results" / f"moa-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"loom MoA benchmark, {args.runs} runs; logs in {bench.tmp}", flush=True)
    try:
        bench.mock.start()
        bench.loom.start()
        result = asyncio.run(bench.run())
    finally:
        bench.loom.stop()
        bench.mock.stop()
    cp, hang = result["critical_path"]["median"], result["hung_proposer"]
    limit = 1.05 * cp["ideal_ms"] + 20 * LAYERS
    hang_limit = DEADLINE_S * 1000 + 50
    result["targets"] = {"ttft_limit_ms": limit, "ttft_pass": cp["ttft_ms"] <= limit,
                         "hang_limit_ms": hang_limit, "hang_pass": hang["max"]["layer_ms"] <= hang_limit}
    out.write_text(json.dumps(result, indent=2))
    t = result["targets"]
    print(f"\ncritical path, {LAYERS} layers of p100/p300/p500 + agg (medians of {args.runs} runs; nominal ideal "
          f"{LAYERS * 500 + 50} ms):")
    print(f"  TTFT {cp['ttft_ms']:.1f} ms   ideal {cp['ideal_ms']:.1f} ms   ratio {cp['ratio']:.3f}   "
          f"overhead {cp['overhead_ms']:.1f} ms   (max over runs: ratio {result['critical_path']['max']['ratio']:.3f})")
    print(f"  overhead by place: to layer 1 {cp['to_layer1_ms']:.1f} ms, between layers {cp['between_layers_ms']:.1f}"
          f" ms, to the aggregator {cp['to_aggregator_ms']:.1f} ms, its first byte to the client "
          f"{cp['first_byte_to_client_ms']:.1f} ms")
    print(f"  target TTFT <= 1.05 x ideal + {20 * LAYERS} ms = {limit:.1f} ms: {'PASS' if t['ttft_pass'] else 'FAIL'}")
    hm = hang["median"]
    print(f"hung proposer, deadline {DEADLINE_S * 1000:.0f} ms ({len(hang['runs'])} runs): "
          f"layer {hm['layer_ms']:.1f} ms median, {hang['max']['layer_ms']:.1f} ms max; "
          f"hung request dropped after {hm['hung_request_ms']:.1f} ms "
          f"({hang['runs'][0]['hung_outcome']}); TTFT {hm['ttft_ms']:.1f} ms")
    print(f"  target layer <= deadline + 50 ms = {hang_limit:.0f} ms: {'PASS' if t['hang_pass'] else 'FAIL'}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
