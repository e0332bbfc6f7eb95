"""The serving benchmark's stacks and phases: the three servers (mock LLM, loom, ag-ui-langgraph) started as their
own processes, a verification that each streams the expected answer, then the measured phases (c=1, load,
saturation, 2,000 tokens, greeting). bench/serving.py runs them and reports."""

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
from pathlib import Path

from bench.client import AGUI, OPENAI, LoadResult, RunResult, run_load, run_once
from bench.procs import Server, free_port
from bench.report import STACKS, TOKENS_LONG, derive, med, ms, pct

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
MODEL = "bench-model"
GREETING = "Hello! How can I help you today?"
EXPECTED_SHORT = "".join(f" w{i}" for i in range(20))


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
