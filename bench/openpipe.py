"""OpenPipe reporting overhead: TTFT and total time of `agent` runs with reporting on against reporting off.

    .venv/bin/python -m bench.openpipe [--runs 40] [--out FILE]      # ~40 s on 2 cores

Processes (loopback only): the mock LLM (`tests.llm_server`, 20 tokens after 50 ms, 5 ms apart), the OpenPipe
stand-in (`tests.openpipe_server`) answering every request after 2 s, and three `loom serve` (SQLite):
  off       reporting off
  slow      reporting on, to the stand-in that answers after 2 s
  refused   reporting on, to a port that refuses connections (every report fails and is retried)
Runs go round-robin over the three at concurrency 1 (same run, same drift), each a fresh connection with the
raw asyncio client of bench/serving.py. TTFT = request start -> first TEXT_MESSAGE_CONTENT; total = -> last
byte. Target: p50 TTFT and total of `slow` and `refused` within +5 ms of `off`. The reporters' counters are
printed at the end (the slow sender's backlog; the refused sender's failures).
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

if __package__ in (None, ""):  # `python bench/openpipe.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import AGUI, run_once  # noqa: E402
from bench.procs import Server, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
OPK = "opk-bench"
VARIANTS = ("off", "slow", "refused")


def body() -> bytes:
    return json.dumps({"threadId": str(uuid.uuid4()), "runId": str(uuid.uuid4()),
                       "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": "Say hello"}]}).encode()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(servers: dict[str, Server], runs: int, warmup: int) -> dict:
    samples = {v: {"ttft": [], "total": []} for v in VARIANTS}
    errors = []
    for i in range(warmup + runs):
        for name in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
            result = await run_once(HOST, servers[name].port, "/agents/agent", body(), AGUI, timeout=30)
            if not result.ok or result.ttft is None:
                errors.append(f"{name}: {result.error or result.terminal}")
                continue
            if i >= warmup:
                samples[name]["ttft"].append(result.ttft * 1000)
                samples[name]["total"].append(result.total * 1000)
    return {"samples": samples, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="loom-bench-openpipe-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "BENCH_", "OPENAI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    py = str(VENV_BIN / "python")
    servers: dict[str, Server] = {}
    started: list[Server] = []
    try:
        mock_port, op_port = free_port(), free_port()
        mock = Server("mock", [py, "-m", "tests.llm_server", "--host", HOST, "--port", str(mock_port), "--ttft-ms",
                               "50", "--token-delay-ms", "5", "--tokens", "20", "--log-limit", "50"],
                      port=mock_port, ready_path="/v1/models", cwd=REPO, env=env, log_dir=tmp)
        started.append(mock.start())
        stand_in = Server("openpipe", [py, "-m", "tests.openpipe_server", "--port", str(op_port), "--api-key", OPK,
                                       "--delay-ms", "2000"],
                          port=op_port, ready_path="/_debug/requests", cwd=REPO, env=env, log_dir=tmp)
        started.append(stand_in.start())
        base = {**env, "LOOM_LLM_BASE_URL": f"{mock.url}/v1", "LOOM_LLM_MODEL": "bench"}
        reporting = {"LOOM_OPENPIPE_ENABLED": "true", "LOOM_OPENPIPE_API_KEY": OPK, "LOOM_OPENPIPE_TIMEOUT": "5"}
        variants = {"off": {},
                    "slow": {**reporting, "LOOM_OPENPIPE_BASE_URL": f"http://{HOST}:{op_port}/api/v1"},
                    "refused": {**reporting, "LOOM_OPENPIPE_BASE_URL": f"http://{HOST}:{free_port()}/api/v1"}}
        for name, extra in variants.items():
            port = free_port()
            server = Server(f"loom-{name}", [str(VENV_BIN / "loom"), "serve", "--port", str(port)], port=port,
                            ready_path="/health", cwd=REPO, log_dir=tmp,
                            env={**base, **extra, "LOOM_DATABASE_URL": f"sqlite:///{tmp}/{name}.db"})
            servers[name] = server
            started.append(server.start())
        result = asyncio.run(measure(servers, args.runs, args.warmup))
        status = {name: json.load(urllib.request.urlopen(f"http://{HOST}:{servers[name].port}/openpipe/status"))
                  for name in VARIANTS}
    finally:
        for server in reversed(started):
            server.stop()
    figures = {}
    off = result["samples"]["off"]
    print(f"agent runs, c=1, {args.runs} per variant (round-robin), ms")
    print(f"{'variant':<9} {'TTFT p50':>9} {'p90':>7} {'total p50':>10} {'p90':>7} {'Δ TTFT p50':>11} "
          f"{'Δ total p50':>12}")
    for name in VARIANTS:
        s = result["samples"][name]
        if not s["ttft"]:
            print(f"{name:<9} no successful runs")
            continue
        f = {"ttft_p50": statistics.median(s["ttft"]), "ttft_p90": pct(s["ttft"], 0.9),
             "total_p50": statistics.median(s["total"]), "total_p90": pct(s["total"], 0.9), "n": len(s["ttft"])}
        f["d_ttft_p50"] = f["ttft_p50"] - statistics.median(off["ttft"])
        f["d_total_p50"] = f["total_p50"] - statistics.median(off["total"])
        figures[name] = f
        print(f"{name:<9} {f['ttft_p50']:>9.1f} {f['ttft_p90']:>7.1f} {f['total_p50']:>10.1f} {f['total_p90']:>7.1f} "
              f"{f['d_ttft_p50']:>+11.1f} {f['d_total_p50']:>+12.1f}")
    print("reporter counters:", json.dumps(status))
    if result["errors"]:
        print(f"{len(result['errors'])} failed runs, e.g. {result['errors'][:3]}")
    ok = all(abs(figures[n]["d_ttft_p50"]) <= 5 and figures[n]["d_total_p50"] <= 5 for n in ("slow", "refused")
             if n in figures) and not result["errors"]
    print("target (≤ +5 ms p50 TTFT and total):", "met" if ok else "NOT met")
    if args.out:
        args.out.write_text(json.dumps({"figures": figures, "status": status, "errors": result["errors"]}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
