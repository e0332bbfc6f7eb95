"""Serving benchmark: loom's AG-UI endpoint vs ag-ui-langgraph vs the mock LLM called directly.

    .venv/bin/python -m bench.serving            # full run, < 10 min on 2 cores
    .venv/bin/python -m bench.serving --quick    # smoke run, < 1 min

Three servers, each its own process under uvicorn (one worker), all against one mock LLM process
(`tests.llm_server`: 50 ms to first token, then 20 tokens 5 ms apart; switched to 2,000 tokens with no delay
for the per-token phase):
  direct           the mock itself, sent the exact /v1/chat/completions body loom's ChatOpenAI sends (the floor)
  loom             `loom serve` (SQLite checkpointer), POST /agents/agent
  ag-ui-langgraph  bench/agui_langgraph_app.py: LangGraphAgent + add_langgraph_fastapi_endpoint, defaults
The driver is bench/client.py (raw asyncio, HTTP/1.1, a fresh connection per run). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # `python bench/serving.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import AGUI, OPENAI, LoadResult, RunResult, run_load, run_once  # noqa: E402
from bench.procs import Server, free_port  # noqa: E402
from bench.report import STACKS, TOKENS_LONG, aggregate, derive, judge, med, ms, pct, table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
MODEL = "bench-model"
GREETING = "Hello! How can I help you today?"
EXPECTED_SHORT = "".join(f" w{i}" for i in range(20))



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


@dataclass
class Config:
    rounds: int
    c1_runs: int
    load_runs: int
    load_c: int
    sat_runs: int
    sat_c: int
    long_runs: int
    warmup: int
    phase_deadline: float
    run_timeout: float
    budget_s: float


FULL = Config(rounds=2, c1_runs=30, load_runs=256, load_c=64, sat_runs=256, sat_c=32, long_runs=6, warmup=6,
              phase_deadline=90, run_timeout=60, budget_s=540)
QUICK = Config(rounds=1, c1_runs=6, load_runs=64, load_c=64, sat_runs=48, sat_c=16, long_runs=1, warmup=2,
               phase_deadline=15, run_timeout=30, budget_s=50)


def agui_body(text: str = "Say hello") -> bytes:
    return json.dumps({"threadId": str(uuid.uuid4()), "runId": str(uuid.uuid4()),
                       "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": text}]}).encode()


class Stack:
    def __init__(self, name: str, server: Server, path: str, kind: str):
        self.name, self.server, self.path, self.kind = name, server, path, kind
        self.direct_body = b""

    def body(self) -> bytes:
        return self.direct_body if self.kind == OPENAI else agui_body()

    async def once(self, *, full: bool = False, timeout: float = 60) -> RunResult:
        return await run_once(HOST, self.server.port, self.path, self.body(), self.kind, full=full, timeout=timeout)

    async def load(self, n: int, c: int, deadline: float, timeout: float) -> LoadResult:
        bodies = [self.body() for _ in range(n)]
        return await run_load(HOST, self.server.port, self.path, bodies, self.kind, c, deadline_s=deadline,
                              timeout=timeout)


class Bench:
    def __init__(self, cfg: Config, args: argparse.Namespace):
        self.cfg, self.args = cfg, args
        self.t_start = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="loom-bench-"))
        self.servers: list[Server] = []
        self.errors: list[str] = []
        self.notes: list[str] = []

    # ----------------------------------------------------------------------------------------- processes

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "BENCH_", "OPENAI_"))}
        env["PYTHONUNBUFFERED"] = "1"
        py = str(VENV_BIN / "python")
        mock_port, loom_port, peer_port = free_port(), free_port(), free_port()
        self.mock = Server("mock", [py, "-m", "tests.llm_server", "--host", HOST, "--port", str(mock_port),
                                    "--ttft-ms", "50", "--token-delay-ms", "5", "--tokens", "20",
                                    "--log-limit", "50"],
                           port=mock_port, ready_path="/v1/models", cwd=REPO, env=env, log_dir=self.tmp)
        self.servers.append(self.mock.start())
        base = f"{self.mock.url}/v1"
        loom_env = {**env, "LOOM_LLM_BASE_URL": base, "LOOM_LLM_MODEL": MODEL,
                    "LOOM_DATABASE_URL": f"sqlite:///{self.tmp}/bench.db"}
        loom = Server("loom", [str(VENV_BIN / "loom"), "serve", "--port", str(loom_port)], port=loom_port,
                      ready_path="/health", cwd=REPO, env=loom_env, log_dir=self.tmp)
        peer_env = {**env, "BENCH_LLM_BASE_URL": base, "BENCH_LLM_MODEL": MODEL}
        peer = Server("ag-ui-langgraph", [py, "-m", "uvicorn", "bench.agui_langgraph_app:app", "--host", HOST,
                                          "--port", str(peer_port), "--workers", "1", "--no-access-log",
                                          "--log-level", "warning"],
                      port=peer_port, ready_path="/agent/health", cwd=REPO, env=peer_env, log_dir=self.tmp)
        self.servers += [loom.start(), peer.start()]
        self.stacks = {
            "direct": Stack("direct", self.mock, "/v1/chat/completions", OPENAI),
            "loom": Stack("loom", loom, "/agents/agent", AGUI),
            "ag-ui-langgraph": Stack("ag-ui-langgraph", peer, "/agent", AGUI),
        }

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def mock_requests(self) -> list[dict]:
        return [r for r in json.loads(self.mock.get("/_requests")) if r["path"] == "/v1/chat/completions"]

    def long_mode(self, on: bool) -> None:
        if on:
            text = "".join(f" w{i}" for i in range(TOKENS_LONG))
            self.mock.post_json(f"/_models/{MODEL}", json.dumps(
                {"latency_ms": 0, "token_delay_ms": 0, "text": text}).encode())
        else:
            self.mock.post_json("/_reset", b"{}")  # back to the CLI defaults (50 ms, 20 x 5 ms)

    def left(self) -> float:
        return self.cfg.budget_s - (time.monotonic() - self.t_start)

    # ------------------------------------------------------------------------------------------- checks

    def check(self, stack: str, r: RunResult, expect_text: str | None, what: str) -> None:
        problems = []
        if not r.ok:
            problems.append(r.error or "failed")
        if expect_text is not None and r.text != expect_text:
            problems.append(f"text {r.text[:60]!r}… != expected {expect_text[:60]!r}…")
        if problems:
            msg = f"{stack} {what}: {'; '.join(problems)}"
            self.errors.append(msg)
            print("  !!", msg, flush=True)

    async def verify(self) -> dict:
        """Warm every stack, capture loom's LLM request for `direct`, check each stack's stream once."""
        out: dict = {}
        loom, direct = self.stacks["loom"], self.stacks["direct"]
        for _ in range(self.cfg.warmup):
            r = await loom.once(full=True)
        self.check("loom", r, EXPECTED_SHORT, "verification run")
        req = self.mock_requests()[-1]
        direct.direct_body = json.dumps(req["body"]).encode()
        out["llm_request"] = {"loom_body_bytes": len(direct.direct_body), "stream": req["body"].get("stream"),
                              "tools": [t["function"]["name"] for t in req["body"].get("tools", [])],
                              "stream_options": req["body"].get("stream_options")}
        for name in ("direct", "ag-ui-langgraph"):
            for _ in range(self.cfg.warmup):
                r = await self.stacks[name].once(full=True)
            self.check(name, r, EXPECTED_SHORT, "verification run")
        peer_req = self.mock_requests()[-1]["body"]
        out["llm_request"]["peer_body_bytes"] = len(json.dumps(peer_req))
        # Driver check: the same run parsed fully and lightly must agree; the direct TTFT must sit on the
        # mock's configured 50 ms.
        for name, stack in self.stacks.items():
            full = await stack.once(full=True)
            light = await stack.once(full=False)
            same = (full.text_frames, full.terminal) == (light.text_frames, light.terminal)
            out[name] = {"ok": full.ok and light.ok and same, "text_frames": full.text_frames,
                         "terminal": full.terminal, "event_types": full.types or None,
                         "ttft_ms": ms(light.ttft), "total_ms": ms(light.total)}
            if not same:
                self.errors.append(f"{name}: full and light SSE parsing disagree "
                                   f"({full.text_frames}/{full.terminal} vs {light.text_frames}/{light.terminal})")
        for _ in range(2):  # warm concurrency paths (connection pools, thread pools)
            await asyncio.gather(*(s.load(16, 8, 30, 30) for s in self.stacks.values()))
        return out

    # ------------------------------------------------------------------------------------------- phases

    async def phase_c1(self) -> dict:
        """Sequential runs, round-robin over the stacks (drift hits all alike)."""
        res = {n: [] for n in self.stacks}
        cpu = {n: 0.0 for n in self.stacks}
        stop_at = time.monotonic() + self.cfg.phase_deadline
        for _ in range(self.cfg.c1_runs):
            if time.monotonic() > stop_at:
                self.notes.append("c=1 phase hit its deadline")
                break
            for name, stack in self.stacks.items():
                before = stack.server.cpu_seconds()
                r = await stack.once(timeout=self.cfg.run_timeout)
                cpu[name] += stack.server.cpu_seconds() - before
                res[name].append(r)
        out = {}
        for name, runs in res.items():
            ok = [r for r in runs if r.ok]
            if len(ok) != len(runs):
                failed = [r.error for r in runs if not r.ok]
                self.errors.append(f"{name} c=1: {len(failed)} failed: {failed[:3]}")
            out[name] = {"runs": len(runs), "ok": len(ok), "ttft_ms": ms(med([r.ttft for r in ok])),
                         "ttft_p90_ms": ms(pct([r.ttft for r in ok], 0.9)), "total_ms": ms(med([r.total for r in ok])),
                         "body_bytes": med([r.body_bytes for r in ok]),
                         "cpu_ms_per_run": round(cpu[name] / max(1, len(ok)) * 1000, 2)}
        return out

    async def phase_load(self, n: int, c: int, label: str) -> dict:
        out = {}
        for name, stack in self.stacks.items():
            deadline = min(self.cfg.phase_deadline, max(5.0, self.left()))
            cpu0, mock0, client0 = stack.server.cpu_seconds(), self.mock.cpu_seconds(), time.process_time()
            lr = await stack.load(n, c, deadline, self.cfg.run_timeout)
            cpu = stack.server.cpu_seconds() - cpu0
            mock_cpu = self.mock.cpu_seconds() - mock0
            client_cpu = time.process_time() - client0
            ok = lr.ok
            if lr.errors:
                self.errors.append(f"{name} {label}: {len(lr.errors)} of {len(lr.runs)} failed: {lr.errors[:3]}")
            if lr.stopped_early:
                self.notes.append(f"{name} {label}: stopped at the {deadline:.0f} s deadline after {len(lr.runs)} runs")
            out[name] = {"runs": len(lr.runs), "ok": len(ok), "concurrency": c, "wall_s": round(lr.wall, 3),
                         "runs_per_s": round(len(ok) / lr.wall, 2) if lr.wall else None,
                         "total_p50_ms": ms(med([r.total for r in ok])),
                         "total_p90_ms": ms(pct([r.total for r in ok], 0.9)),
                         "ttft_p50_ms": ms(med([r.ttft for r in ok])),
                         "cpu_ms_per_run": round(cpu / max(1, len(ok)) * 1000, 2),
                         "server_cpu_utilisation": round(cpu / lr.wall, 3) if lr.wall else None,
                         "mock_cpu_ms_per_run": round(mock_cpu / max(1, len(ok)) * 1000, 2),
                         "client_cpu_ms_per_run": round(client_cpu / max(1, len(ok)) * 1000, 2),
                         "rss_mb": round(stack.server.rss_mb(), 1)}
            print(f"    {label:>6} {name:<16} {len(ok):4d}/{len(lr.runs)} ok  {out[name]['runs_per_s']:7.1f} runs/s  "
                  f"p50 {out[name]['total_p50_ms']:8.1f} ms  CPU {out[name]['cpu_ms_per_run']:6.1f} ms/run",
                  flush=True)
        return out

    async def phase_long(self) -> dict:
        """2,000 tokens, no delay: server CPU per streamed token."""
        out = {}
        self.long_mode(True)
        try:
            for name, stack in self.stacks.items():
                stop_at = time.monotonic() + min(self.cfg.phase_deadline, max(10.0, self.left()))
                cpu0, mock0, t0 = stack.server.cpu_seconds(), self.mock.cpu_seconds(), time.perf_counter()
                runs: list[RunResult] = []
                for _ in range(self.cfg.long_runs):
                    if time.monotonic() > stop_at:
                        self.notes.append(f"{name} 2k-token phase hit its deadline")
                        break
                    r = await stack.once(timeout=self.cfg.run_timeout)
                    runs.append(r)
                    if r.ok and r.text_frames != TOKENS_LONG:
                        self.errors.append(f"{name} 2k tokens: {r.text_frames} text deltas, expected {TOKENS_LONG}")
                wall = time.perf_counter() - t0
                cpu = stack.server.cpu_seconds() - cpu0
                mock_cpu = self.mock.cpu_seconds() - mock0
                ok = [r for r in runs if r.ok]
                if len(ok) != len(runs):
                    failed = [r.error for r in runs if not r.ok]
                    self.errors.append(f"{name} 2k tokens: {len(failed)} failed: {failed[:2]}")
                tokens = len(ok) * TOKENS_LONG
                out[name] = {"runs": len(runs), "ok": len(ok), "wall_s": round(wall, 3),
                             "total_ms": ms(med([r.total for r in ok])),
                             "cpu_s_per_run": round(cpu / max(1, len(ok)), 4),
                             "cpu_s_per_1k_tokens": round(cpu / tokens * 1000, 4) if tokens else None,
                             "mock_cpu_s_per_1k_tokens": round(mock_cpu / tokens * 1000, 4) if tokens else None,
                             "body_bytes_per_run": med([r.body_bytes for r in ok]),
                             "bytes_per_token": round(med([r.body_bytes for r in ok]) / TOKENS_LONG, 1) if ok else None}
                print(f"    {'2k-tok':>6} {name:<16} {len(ok)}/{len(runs)} ok  "
                      f"{out[name]['cpu_s_per_1k_tokens']} CPU-s/1k tokens  {out[name]['total_ms']} ms/run", flush=True)
        finally:
            self.long_mode(False)
        return out

    async def phase_greeting(self) -> dict:
        out = {}
        for name, stack in self.stacks.items():
            self.mock.post_json("/_script", json.dumps({"model": "*", "responses": [{"text": GREETING}]}).encode())
            r = await stack.once(full=True, timeout=self.cfg.run_timeout)
            self.check(name, r, GREETING, "greeting")
            out[name] = {"body_bytes": r.body_bytes, "wire_bytes": r.wire_bytes, "events": r.frames,
                         "event_types": r.types or None}
        return out

    # -------------------------------------------------------------------------------------------- rounds

    async def run(self) -> dict:
        cfg = self.cfg
        result: dict = {"verify": await self.verify(), "rounds": []}
        print(f"  verified: {json.dumps({k: v.get('ok') for k, v in result['verify'].items() if k in STACKS})}; "
              f"loom's LLM request body {result['verify']['llm_request']['loom_body_bytes']} B "
              f"(tools: {result['verify']['llm_request']['tools']})", flush=True)
        for i in range(cfg.rounds):
            if i and self.left() < 150:
                self.notes.append(f"stopped after {i} round(s): time budget")
                break
            print(f"  round {i + 1}/{cfg.rounds}", flush=True)
            rnd = {"c1": await self.phase_c1()}
            print("    c=1   " + "  ".join(f"{n}: TTFT {v['ttft_ms']} ms, total {v['total_ms']} ms"
                                          for n, v in rnd["c1"].items()), flush=True)
            rnd["load"] = await self.phase_load(cfg.load_runs, cfg.load_c, f"c={cfg.load_c}")
            rnd["sat"] = await self.phase_load(cfg.sat_runs, cfg.sat_c, f"c={cfg.sat_c}")
            rnd["long"] = await self.phase_long()
            if i == 0:
                rnd["greeting"] = await self.phase_greeting()
            rnd["derived"] = derive(rnd)
            result["rounds"].append(rnd)
        return result


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
