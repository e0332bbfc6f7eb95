"""Serving benchmark: loom's AG-UI endpoint vs ag-ui-langgraph vs the mock LLM called directly.

    .venv/bin/python -m bench.serving            # full run, < 10 min on 2 cores
    .venv/bin/python -m bench.serving --quick    # smoke run, < 1 min

Three servers, each its own process under uvicorn (one worker), all against one mock LLM process
(`tests.llm_server`: 50 ms to first token, then 20 tokens 5 ms apart; switched to 2,000 tokens with no delay
for the per-token phase):
  direct           the mock itself, sent the exact /v1/chat/completions body loom's ChatOpenAI sends (the floor)
  loom             `loom serve` (SQLite checkpointer), POST /agents/agent
  ag-ui-langgraph  bench/agui_langgraph_app.py: LangGraphAgent + add_langgraph_fastapi_endpoint, defaults
The driver is bench/client.py (raw asyncio, HTTP/1.1, a fresh connection per run); the servers and phases are in
bench/serving_phases.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # `python bench/serving.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import TOKENS_LONG, aggregate, judge, table  # noqa: E402
from bench.serving_phases import FULL, QUICK, REPO, Bench  # noqa: E402

RESULTS = REPO / "bench" / "results"


# py-spy probes for loom: share of event-loop samples whose stack contains the frame (substring).
LOOM_PROBES = [
    ("uvicorn socket writes (RequestResponseCycle.send)", "RequestResponseCycle.send ("),
    ("loom: request handler run_agent (auth, body, validation, prepare_run)", "create_app.<locals>.run_agent ("),
    ("  loom: RunAgentInput validation (_parse_run)", "_parse_run (server/app.py)"),
    ("loom: prepare_run (aget_state + reconcile)", "prepare_run (server/runs.py)"),
    ("  of which Pregel.aget_state", "Pregel.aget_state ("),
    ("loom: stream_run generator frames (translate + encode + finish)", "stream_run (server/runs.py)"),
    ("  loom: SSE encode (event.model_dump_json)", "encode (server/runs.py)"),
    ("  loom: RunTranslator.feed", "RunTranslator.feed ("),
    ("langgraph Pregel loop (astream/tick/checkpoint bookkeeping)", "(langgraph/pregel/"),
    ("checkpoint writes (AsyncSqliteSaver.aput / aput_writes)", "AsyncSqliteSaver.aput"),
    ("graphs/agent.py call_model node", "call_model (graphs/agent.py)"),
    ("  bind_tools (tool -> OpenAI schema, per call)", "bind_tools ("),
    ("  openai SDK: build request (async_maybe_transform)", "async_maybe_transform ("),
    ("  openai SDK: HTTP to the LLM (httpx/httpcore)", "(httpcore"),
    ("  openai SDK: stream parsing (AsyncStream.__stream__)", "AsyncStream.__stream__ ("),
    ("  langchain-openai chunk -> AIMessageChunk", "_convert_chunk_to_generation_chunk ("),
    ("langchain callbacks (on_llm_new_token, run managers)", "(langchain_core/callbacks/"),
    ("  langgraph StreamMessagesHandler (stream_mode=messages)", "StreamMessagesHandler."),
    ("pydantic (any frame)", "(pydantic/"),
    ("logging", "(logging/__init__.py)"),
]


# Exclusive CPU breakdown of loom's event-loop thread: a sample goes to the first bucket with a matching frame.
LOOM_BUCKETS = [
    ("loom: SSE encode (ag_ui event.model_dump_json)", ("encode (server/runs.py)",)),
    ("loom: RunTranslator (events from stream parts)", ("(adapters/agui/outbound.py)",)),
    ("loom: request handler (auth, body, RunAgentInput validation, prepare_run/aget_state)",
     ("create_app.<locals>.run_agent (",)),
    ("HTTP client to the LLM (httpx/httpcore: pool, request, response reads)", ("(httpcore", "(httpx")),
    ("openai SDK: stream parsing (SSE decode + ChatCompletionChunk construct)", ("AsyncStream.__stream__ (",)),
    ("openai SDK: request build and the rest", ("(openai/",)),
    ("langgraph stream_mode=messages handler", ("StreamMessagesHandler.",)),
    ("langchain callbacks (run managers, on_llm_new_token/start/end dispatch)", ("(langchain_core/callbacks/",
                                                                                 "(langchain_core/tracers/")),
    ("langchain-openai: chunk -> AIMessageChunk, payload", ("(langchain_openai/", "(graphs/llm.py)")),
    ("graphs/agent.py: bind_tools (tool -> OpenAI schema, per call)", ("bind_tools (",)),
    ("graphs/agent.py: call_model, rest (history, prompt, message merge)", ("call_model (graphs/agent.py)",)),
    ("langchain_core other (runnables, messages, chunk merge)", ("(langchain_core/",)),
    ("checkpoint writes (AsyncSqliteSaver, serde, aiosqlite)", ("(langgraph/checkpoint/", "(aiosqlite/")),
    ("langgraph Pregel loop (astream, ticks, tasks, channels)", ("(langgraph/",)),
    ("HTTP server: uvicorn/starlette + loom's SSE response (server/sse.py), socket writes",
     ("(uvicorn/", "(starlette/", "(fastapi/", "(h11/", "(server/sse.py)", "(server/app.py)")),
    ("anyio (task groups, cancel scopes)", ("(anyio/",)),
    ("asyncio (tasks, queues, locks)", ("(asyncio/",)),
]




async def profile_loom(bench: Bench, which: list[str], out_dir: Path) -> dict:
    from bench.profile import Recorder, render, summarize

    loom = bench.stacks["loom"]
    profiles = {}
    for kind in which:
        raw = out_dir / f"loom-{kind}.raw"
        with Recorder(loom.server.pid, raw, rate=100, max_seconds=60):
            cpu0, t0, threads0 = loom.server.cpu_seconds(), time.perf_counter(), loom.server.thread_cpu_seconds()
            if kind == "load":  # the saturation workload, 20-token runs
                lr = await loom.load(bench.cfg.sat_runs * 2, bench.cfg.sat_c, 15, bench.cfg.run_timeout)
                runs, note = len(lr.ok), f"c={bench.cfg.sat_c}, {len(lr.ok)} runs, {len(lr.ok) / lr.wall:.1f} runs/s"
            elif kind == "c1":  # sequential runs: the critical path to the first token
                runs = 0
                for _ in range(40):
                    runs += (await loom.once()).ok
                note = f"c=1, {runs} runs"
            else:  # 2,000-token runs
                bench.long_mode(True)
                try:
                    runs = 0
                    for _ in range(4):
                        runs += (await loom.once()).ok
                finally:
                    bench.long_mode(False)
                note = f"c=1, {runs} runs of {TOKENS_LONG} tokens"
            cpu, wall = loom.server.cpu_seconds() - cpu0, time.perf_counter() - t0
            threads1 = loom.server.thread_cpu_seconds()
        main_cpu = threads1.get(loom.server.pid, 0) - threads0.get(loom.server.pid, 0)
        summary = summarize(raw, LOOM_PROBES, buckets=LOOM_BUCKETS, cpu_s=cpu, runs=runs,
                            tokens=runs * TOKENS_LONG if kind == "long" else 0)
        summary.update(workload=note, server_cpu_s=round(cpu, 3), main_thread_cpu_s=round(main_cpu, 3),
                       wall_s=round(wall, 3))
        profiles[kind] = summary
        print()
        print(render(summary, f"py-spy, loom, {kind} ({note}; server CPU {cpu:.2f} s over {wall:.1f} s, of which "
                              f"event-loop thread {main_cpu:.2f} s, other threads {cpu - main_cpu:.2f} s)"))
    return profiles


def git_state() -> dict:
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"head": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--porcelain", "--", "server", "adapters", "graphs").splitlines()}


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("langgraph", "langchain-core", "langchain-openai", "openai", "ag-ui-langgraph", "ag-ui-protocol",
                "uvicorn", "fastapi", "starlette", "pydantic", "uvloop", "httptools", "aiosqlite"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 1 min): 1 round, few runs, no profile")
    p.add_argument("--rounds", type=int, help="rounds of all phases (default 2; --quick 1)")
    p.add_argument("--profile", choices=["auto", "always", "never"], default=None,
                   help="py-spy loom after the measurement: auto = only for missed targets (default; never "
                        "with --quick)")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/serving-<time>.json)")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.rounds:
        cfg.rounds = args.rounds
    profile = args.profile or ("never" if args.quick else "auto")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    bench = Bench(cfg, args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"serving-{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    print(f"loom serving benchmark ({'quick' if args.quick else 'full'}); logs in {bench.tmp}", flush=True)
    try:
        bench.start()
        result = asyncio.run(bench.run())
        agg = aggregate(result["rounds"])
        targets = judge(agg)
        failed = [t["metric"] for t in targets if not t["pass"]]
        profiles = {}
        if profile == "always" or (profile == "auto" and failed):
            which = ["load", "long"] if profile == "always" else sorted(
                {{"ttft_overhead_ms": "c1", "p50_c64_ratio": "load", "runs_per_s_vs_peer": "load",
                  "cpu_s_per_1k_tokens": "long"}[m] for m in failed if m != "greeting_bytes"})
            if which:
                profiles = asyncio.run(profile_loom(bench, which, out.parent))
    finally:
        bench.stop()
    report = {
        "when": stamp, "quick": args.quick, "config": cfg.__dict__, "versions": versions(), "git": git_state(),
        "cpus": os.cpu_count(),
        "loadavg_start": load0, "loadavg_end": os.getloadavg(),
        "elapsed_s": round(time.monotonic() - bench.t_start, 1),
        "mock": {"ttft_ms": 50, "tokens": 20, "token_delay_ms": 5, "long_tokens": TOKENS_LONG},
        "summary": agg, "targets": targets, "rounds": result["rounds"], "verify": result["verify"],
        "profiles": profiles, "errors": bench.errors, "notes": bench.notes,
    }
    out.write_text(json.dumps(report, indent=2))
    print()
    dirty = report["git"]["dirty"]
    print(f"loom at {report['git']['head']}{f' + uncommitted changes in {len(dirty)} file(s)' if dirty else ''}; "
          f"median of {len(result['rounds'])} round(s); ratios within each round; "
          f"elapsed {report['elapsed_s']:.0f} s; load average {load0[0]:.2f} -> {report['loadavg_end'][0]:.2f}")
    print(table(agg, targets))
    for note in bench.notes:
        print("note:", note)
    for err in bench.errors:
        print("ERROR:", err)
    print(f"\nJSON: {out}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
