"""Cost of metrics: TTFT p50 and loom CPU per run with metrics off, on, and on in multiprocess mode.

    .venv/bin/python -m bench.observability [--rounds 8] [--block 15] [--out FILE]      # ~1 min on 2 cores

Processes (loopback only): the mock LLM (`tests.llm_server`, 20 tokens after 5 ms, 1 ms apart) and three
`loom serve` (SQLite, one process each, plain-text logs):
  off        LOOM_METRICS_ENABLED=false
  on         metrics on (one process: prometheus-client's in-memory values)
  on_mp      metrics on with PROMETHEUS_MULTIPROC_DIR set (the mmap-file values every `--workers N` worker uses)
Blocks of `--block` runs go to each in turn (order alternating per round), at concurrency 1, each run a fresh
connection with the raw asyncio client of bench/client.py. TTFT = request start -> first TEXT_MESSAGE_CONTENT.
CPU per run = the server process's utime+stime over its blocks / runs. After the runs, /metrics of `on` is
scraped once to check that it counted them. Target: ≤ +0.5 ms p50 TTFT and ≤ +5% CPU per run against `off`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

if __package__ in (None, ""):  # `python bench/observability.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import AGUI, run_once  # noqa: E402
from bench.procs import Server, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
VARIANTS = ("off", "on", "on_mp")


def body() -> bytes:
    return json.dumps({"threadId": str(uuid.uuid4()), "runId": str(uuid.uuid4()),
                       "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": "Say hello"}]}).encode()


async def measure(servers: dict[str, Server], rounds: int, block: int, warmup: int) -> dict:
    ttft: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu = dict.fromkeys(VARIANTS, 0.0)
    runs = dict.fromkeys(VARIANTS, 0)
    errors: list[str] = []
    for name in VARIANTS:  # warm-up: imports, first connections, caches
        for _ in range(warmup):
            await run_once(HOST, servers[name].port, "/agents/agent", body(), AGUI, timeout=30)
    for i in range(rounds):
        for name in VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS)):
            before = servers[name].cpu_seconds()
            for _ in range(block):
                result = await run_once(HOST, servers[name].port, "/agents/agent", body(), AGUI, timeout=30)
                if not result.ok or result.ttft is None:
                    errors.append(f"{name}: {result.error or result.terminal}")
                    continue
                ttft[name].append(result.ttft * 1000)
                runs[name] += 1
            cpu[name] += servers[name].cpu_seconds() - before
    return {"ttft": ttft, "cpu_ms": {n: cpu[n] / max(1, runs[n]) * 1000 for n in VARIANTS}, "runs": runs,
            "errors": errors}


def counted_runs(server: Server) -> float:
    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("loom_runs_total{"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="loom-bench-observability-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOOM_", "BENCH_", "OPENAI_", "PROMETHEUS_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    py = str(VENV_BIN / "python")
    servers: dict[str, Server] = {}
    started: list[Server] = []
    try:
        mock_port = free_port()
        mock = Server("mock", [py, "-m", "tests.llm_server", "--host", HOST, "--port", str(mock_port), "--ttft-ms",
                               "5", "--token-delay-ms", "1", "--tokens", "20", "--log-limit", "50"],
                      port=mock_port, ready_path="/v1/models", cwd=REPO, env=env, log_dir=tmp)
        started.append(mock.start())
        base = {**env, "LOOM_LLM_BASE_URL": f"{mock.url}/v1", "LOOM_LLM_MODEL": "bench"}
        (tmp / "mp").mkdir()
        variants = {"off": {"LOOM_METRICS_ENABLED": "false"}, "on": {},
                    "on_mp": {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "mp")}}
        for name, extra in variants.items():
            port = free_port()
            server = Server(f"loom-{name}", [str(VENV_BIN / "loom"), "serve", "--port", str(port)], port=port,
                            ready_path="/health", cwd=REPO, log_dir=tmp,
                            env={**base, **extra, "LOOM_DATABASE_URL": f"sqlite:///{tmp}/{name}.db"})
            servers[name] = server
            started.append(server.start())
        result = asyncio.run(measure(servers, args.rounds, args.block, args.warmup))
        counted = {name: counted_runs(servers[name]) for name in ("on", "on_mp")}
    finally:
        for server in reversed(started):
            server.stop()
    off_ttft, off_cpu = statistics.median(result["ttft"]["off"]), result["cpu_ms"]["off"]
    figures = {}
    print(f"agent runs, c=1, {args.rounds} rounds x {args.block} runs per variant, ms")
    print(f"{'variant':<7} {'TTFT p50':>9} {'Δ':>7} {'CPU/run':>8} {'Δ %':>7} {'runs':>5}")
    for name in VARIANTS:
        p50, cpu = statistics.median(result["ttft"][name]), result["cpu_ms"][name]
        figures[name] = {"ttft_p50_ms": round(p50, 3), "d_ttft_p50_ms": round(p50 - off_ttft, 3),
                         "cpu_ms_per_run": round(cpu, 3), "d_cpu_pct": round((cpu / off_cpu - 1) * 100, 1),
                         "runs": result["runs"][name]}
        f = figures[name]
        print(f"{name:<7} {p50:>9.2f} {f['d_ttft_p50_ms']:>+7.2f} {cpu:>8.2f} {f['d_cpu_pct']:>+7.1f} {f['runs']:>5}")
    print("runs counted by /metrics:", counted)
    if result["errors"]:
        print(f"{len(result['errors'])} failed runs, e.g. {result['errors'][:3]}")
    ok = not result["errors"] and all(figures[n]["d_ttft_p50_ms"] <= 0.5 and figures[n]["d_cpu_pct"] <= 5
                                      for n in ("on", "on_mp"))
    print("target (≤ +0.5 ms p50 TTFT, ≤ +5% CPU per run):", "met" if ok else "NOT met")
    if args.out:
        args.out.write_text(json.dumps({"figures": figures, "counted": counted, "errors": result["errors"]},
                                       indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
