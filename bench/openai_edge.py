"""What the OpenAI edge costs: POST /v1/chat/completions vs POST /agents/agent, same graph, same server.

    .venv/bin/python -m bench.openai_edge            # ~2 min on 2 cores
    .venv/bin/python -m bench.openai_edge --quick    # smoke run

One `loom serve` (SQLite) against the scripted LLM (tests.llm_server, 20 tokens). Two phases, each alternating
the endpoints so drift hits both alike:
  ttft   sequential runs (c=1), the mock at 50 ms to first token then 5 ms per token: time to the first text
         delta (AG-UI TEXT_MESSAGE_CONTENT, OpenAI delta.content), p50, and server CPU per run;
  load   closed loop at concurrency c, the mock with no delays (loom's CPU is the limit): runs/s, rounds
         alternating (ABBA), the median per endpoint; and runs per CPU-second of the server, which other load on
         a shared machine moves far less than runs/s;
  edge   in-process, one recorded run's AG-UI events: SSE encoding alone vs chunk translation + encoding.
Targets (issue 13): TTFT p50 within 1 ms, runs/s within 5% of the AG-UI endpoint.
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

if __package__ in (None, ""):  # `python bench/openai_edge.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import AGUI, OPENAI, run_load, run_once  # noqa: E402
from bench.procs import Server, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST, MODEL = "127.0.0.1", "bench-model"
EXPECTED = "".join(f" w{i}" for i in range(20))
ENDPOINTS = {"agui": ("/agents/agent", AGUI), "openai": ("/v1/chat/completions", OPENAI)}


def body(kind: str) -> bytes:
    if kind == "openai":
        return json.dumps({"model": "agent", "stream": True,
                           "messages": [{"role": "user", "content": "Say hello"}]}).encode()
    return json.dumps({"threadId": str(uuid.uuid4()), "runId": str(uuid.uuid4()),
                       "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": "Say hello"}]}).encode()


def start(tmp: Path) -> tuple[Server, Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "BENCH_", "OPENAI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    mock_port, loom_port = free_port(), free_port()
    mock = Server("mock", [str(VENV_BIN / "python"), "-m", "tests.llm_server", "--host", HOST, "--port",
                           str(mock_port), "--ttft-ms", "50", "--token-delay-ms", "5", "--tokens", "20",
                           "--log-limit", "50"],
                  port=mock_port, ready_path="/v1/models", cwd=REPO, env=env, log_dir=tmp).start()
    loom_env = {**env, "LOOM_LLM_BASE_URL": f"{mock.url}/v1", "LOOM_LLM_MODEL": MODEL,
                "LOOM_DATABASE_URL": f"sqlite:///{tmp}/bench.db"}
    loom = Server("loom", [str(VENV_BIN / "loom"), "serve", "--port", str(loom_port)], port=loom_port,
                  ready_path="/health", cwd=REPO, env=loom_env, log_dir=tmp)
    try:
        loom.start()
    except BaseException:
        mock.stop()
        raise
    return mock, loom


async def verify(loom: Server) -> list[dict]:
    """Both endpoints give the expected answer; returns the AG-UI events of one run (for the edge phase)."""
    for name, (path, kind) in ENDPOINTS.items():
        r = await run_once(HOST, loom.port, path, body(name), kind, full=True)
        if not r.ok or r.text != EXPECTED:
            raise SystemExit(f"{name}: unexpected answer {r.text!r} ({r.error})")
    raw = loom.post_json("/agents/agent", body("agui")).decode()
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]


async def phase_ttft(loom: Server, runs: int) -> dict:
    ttft: dict[str, list[float]] = {n: [] for n in ENDPOINTS}
    cpu = dict.fromkeys(ENDPOINTS, 0.0)
    for _ in range(runs):
        for name, (path, kind) in ENDPOINTS.items():
            before = loom.cpu_seconds()
            r = await run_once(HOST, loom.port, path, body(name), kind)
            cpu[name] += loom.cpu_seconds() - before
            if not r.ok:
                raise SystemExit(f"{name} failed: {r.error}")
            ttft[name].append(r.ttft)
    return {n: {"runs": runs, "ttft_p50_ms": round(statistics.median(v) * 1000, 2),
                "ttft_p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))] * 1000, 2),
                "cpu_ms_per_run": round(cpu[n] / runs * 1000, 2)} for n, v in ttft.items()}


async def phase_load(loom: Server, mock: Server, rounds: int, runs: int, concurrency: int) -> dict:
    mock.post_json(f"/_models/{MODEL}", json.dumps({"latency_ms": 0, "token_delay_ms": 0}).encode())
    rates: dict[str, list[float]] = {n: [] for n in ENDPOINTS}
    cpu: dict[str, list[float]] = {n: [] for n in ENDPOINTS}
    for round_ in range(rounds):
        order = list(ENDPOINTS.items())
        for name, (path, kind) in order if round_ % 2 == 0 else order[::-1]:  # ABBA: no endpoint always first
            cpu0 = loom.cpu_seconds()
            result = await run_load(HOST, loom.port, path, [body(name) for _ in range(runs)], kind, concurrency,
                                    deadline_s=120)
            if result.errors:
                raise SystemExit(f"{name} under load: {len(result.errors)} failed: {result.errors[:3]}")
            rates[name].append(len(result.ok) / result.wall)
            cpu[name].append((loom.cpu_seconds() - cpu0) / len(result.ok) * 1000)
            print(f"    {name:<7} {rates[name][-1]:7.1f} runs/s  CPU {cpu[name][-1]:5.2f} ms/run", flush=True)
    mock.post_json("/_reset", b"{}")
    # Runs per second of one core's CPU: unlike runs/s, not moved by what else runs on a shared machine.
    return {n: {"rounds": [round(r, 1) for r in rates[n]], "runs_per_s": round(statistics.median(v), 1),
                "cpu_ms_per_run": round(statistics.median(cpu[n]), 2),
                "runs_per_cpu_s": round(1000 / statistics.median(cpu[n]), 1), "concurrency": concurrency}
            for n, v in rates.items()}


def phase_edge(events: list[dict], iterations: int) -> dict:
    """In-process CPU of the edge alone, for one recorded run: AG-UI SSE encoding vs chunks + their encoding."""
    from loom.adapters.openai.outbound import DONE, ChunkTranslator
    from loom.server.runs import encode

    def agui() -> str:
        return encode(events)

    def openai() -> str:
        translator = ChunkTranslator("chatcmpl-bench", "agent", "thread", client_tools=frozenset())
        return "".join(translator.sse(chunk) for event in events for chunk in translator.feed(event)) + DONE

    out = {}
    for name, fn in (("agui", agui), ("openai", openai)):
        best = min(_timed(fn, iterations) for _ in range(5))
        out[name] = {"us_per_run": round(best / iterations * 1e6, 1)}
    return out


def _timed(fn, iterations: int) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        fn()
    return time.perf_counter() - started


async def main_async(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="loom-bench-openai-"))
    mock, loom = start(tmp)
    try:
        events = await verify(loom)
        for name, (path, kind) in ENDPOINTS.items():  # warm both paths (imports, caches) before measuring
            for _ in range(5):
                await run_once(HOST, loom.port, path, body(name), kind)
        print("ttft (c=1, alternating)", flush=True)
        ttft = await phase_ttft(loom, 10 if args.quick else 60)
        print(f"load (c={args.concurrency}, alternating rounds)", flush=True)
        load = await phase_load(loom, mock, 1 if args.quick else 4, 64 if args.quick else 400, args.concurrency)
    finally:
        loom.stop()
        mock.stop()
    edge = phase_edge(events, 200 if args.quick else 2000)
    delta_ttft = ttft["openai"]["ttft_p50_ms"] - ttft["agui"]["ttft_p50_ms"]
    ratio = load["openai"]["runs_per_s"] / load["agui"]["runs_per_s"]
    cpu_ratio = load["openai"]["runs_per_cpu_s"] / load["agui"]["runs_per_cpu_s"]
    return {"ttft": ttft, "load": load, "edge_cpu": edge, "run_events": len(events),
            "openai_minus_agui_ttft_p50_ms": round(delta_ttft, 2),
            "openai_over_agui_runs_per_s": round(ratio, 3), "openai_over_agui_runs_per_cpu_s": round(cpu_ratio, 3),
            "targets_met": {"ttft_within_1ms": delta_ttft <= 1.0, "runs_per_s_within_5pct": ratio >= 0.95,
                            "runs_per_cpu_s_within_5pct": cpu_ratio >= 0.95},
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 30 s)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write the JSON result here too")
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(result["targets_met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
