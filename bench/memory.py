"""Memory benchmark: search latency over one user's 10,000 memories, and what recall adds to time to first token.

    .venv/bin/python -m bench.memory            # ~3 min on 2 cores (embedding 10,000 memories takes most of it)
    .venv/bin/python -m bench.memory --quick    # 2,000 memories, fewer runs

Part 1, in process (graphs.memory_store.StoreMemoryBackend on an SQLite store, the `memory` extra's
  all-MiniLM-L6-v2, int8 on ONNX Runtime):
  one user with N memories (generated sentences, plus tests/memory_quality_set.py's 40); search p50/p99 for
  lexical (BM25) and hybrid (BM25 + embeddings, RRF) with the index warm, and the first search after a write
  (the index reloads from the store).
Part 2, over HTTP (`loom serve` on the same SQLite file, the mock LLM: 50 ms to first token, 20 tokens 5 ms
  apart): sequential runs, round-robin over `agent`, `memory` for a user with no memories, and `memory` for the
  user with N memories (hybrid recall of 5); TTFT medians. Recall's added TTFT = memory - agent, same round.
Prints the figures; writes bench/results/memory-<time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import AGUI, run_once  # noqa: E402
from bench.procs import Server, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
USER, EMPTY_USER = "bench-user", "bench-newcomer"

_PEOPLE = "my sister|my boss|Sam|my neighbour|the kids|my mother|Alex|my dentist|the team|my landlord".split("|")
_VERBS = "visited|called|cooked for|argued with|went hiking with|sent flowers to|borrowed a book from|" \
         "played chess with|drove to the airport with|had coffee with".split("|")
_PLACES = "in Lyon|at the office|in the park|at the gym|near the river|in Berlin|at home|at the market|" \
          "on the train|at the cinema".split("|")
_DETAILS = "it rained all day|we talked about moving abroad|I forgot my wallet|the food was excellent|" \
           "we planned a trip to Japan|I felt tired|we discussed the budget|it was a birthday|" \
           "we watched a documentary about whales|I learned a new recipe for dumplings".split("|")


def generated_memories(n: int, seed: int = 7) -> list[str]:
    from tests.memory_quality_set import MEMORIES

    rng = random.Random(seed)
    texts = [f"On day {i}, I {rng.choice(_VERBS)} {rng.choice(_PEOPLE)} {rng.choice(_PLACES)}; "
             f"{rng.choice(_DETAILS)}." for i in range(n - len(MEMORIES))]
    return texts + list(MEMORIES)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# ------------------------------------------------------------------------------------------- part 1: search


async def search_latency(db: Path, n: int, queries: int) -> dict:
    from langgraph.store.sqlite.aio import AsyncSqliteStore

    from loom.graphs.memory_search import LocalEmbedder
    from loom.graphs.memory_store import MemoryLimits
    from loom.graphs.memory_store_backend import StoreMemoryBackend
    from tests.memory_quality_set import QUERIES

    embedder = LocalEmbedder()
    limits = MemoryLimits(max_per_user=n + 100)
    out: dict = {"memories": n}
    async with AsyncSqliteStore.from_conn_string(str(db)) as store:
        await store.setup()
        memories = StoreMemoryBackend(store, limits, embedder=embedder)
        await embedder.embed(["warm up"])  # model load (seconds) is not search latency
        t0 = time.perf_counter()
        texts = generated_memories(n)
        for start in range(0, n, 1000):
            await memories.add_many(USER, texts[start:start + 1000])
        out["seed_s"] = round(time.perf_counter() - t0, 1)
        print(f"  seeded {n} memories with embeddings in {out['seed_s']} s")

        questions = [q for q, _ in QUERIES] + ["Who did I go hiking with?", "the birthday dinner", "whales",
                                                "Which trips did we plan?", "dumplings recipe"]
        t0 = time.perf_counter()
        await memories.search(USER, "warm the index", 5)  # first search: load + BM25 + matrix
        out["cold_index_ms"] = ms(time.perf_counter() - t0)
        for mode, semantic in (("lexical", False), ("hybrid", True)):
            times = []
            for i in range(queries):
                t0 = time.perf_counter()
                await memories.search(USER, questions[i % len(questions)], 5, semantic=semantic)
                times.append(time.perf_counter() - t0)
            out[mode] = {"p50_ms": ms(statistics.median(times)), "p99_ms": ms(pct(times, 0.99)), "n": len(times)}
        reloads = []
        for i in range(5):
            await memories.add(USER, f"A fresh memory number {i}.")
            t0 = time.perf_counter()
            await memories.search(USER, questions[i], 5)
            reloads.append(time.perf_counter() - t0)
        out["after_write_p50_ms"] = ms(statistics.median(reloads))
    return out


# ----------------------------------------------------------------------------------------------- part 2: TTFT


def body(graph: str, user: str | None) -> bytes:
    data = {"threadId": str(uuid.uuid4()), "runId": str(uuid.uuid4()),
            "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": "What did I cook for Sam in Lyon?"}]}
    if graph == "memory":
        data["forwardedProps"] = {"user": {"id": user}, "context": {"recall": 5, "auto_save": False}}
    return json.dumps(data).encode()


async def recall_ttft(db: Path, tmp: Path, runs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "OPENAI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    py = str(VENV_BIN / "python")
    mock_port, loom_port = free_port(), free_port()
    mock = Server("mock", [py, "-m", "tests.llm_server", "--host", HOST, "--port", str(mock_port), "--ttft-ms",
                           "50", "--token-delay-ms", "5", "--tokens", "20", "--log-limit", "50"],
                  port=mock_port, ready_path="/v1/models", cwd=REPO, env=env, log_dir=tmp)
    loom_env = {**env, "LOOM_LLM_BASE_URL": f"{mock.url}/v1", "LOOM_LLM_MODEL": "bench-model",
                "LOOM_DATABASE_URL": f"sqlite:///{db}", "LOOM_MEMORY_MAX_PER_USER": "100000"}
    loom = Server("loom", [str(VENV_BIN / "loom"), "serve", "--port", str(loom_port)], port=loom_port,
                  ready_path="/health", cwd=REPO, env=loom_env, log_dir=tmp)
    stacks = {"agent": ("/agents/agent", None), "memory (0 memories)": ("/agents/memory", EMPTY_USER),
              "memory (N memories)": ("/agents/memory", USER)}
    try:
        mock.start()
        loom.start()
        for path, user in stacks.values():  # warm-up: embedding model load, index load, connections
            for _ in range(3):
                result = await run_once(HOST, loom_port, path, body(path.rsplit("/", 1)[1], user), AGUI, full=True)
                if not result.ok:
                    raise RuntimeError(f"{path}: {result.error or result.terminal}\n{loom.tail()}")
        ttft: dict[str, list[float]] = {name: [] for name in stacks}
        cpu0 = loom.cpu_seconds()
        for _ in range(runs):
            for name, (path, user) in stacks.items():
                result = await run_once(HOST, loom_port, path, body(path.rsplit("/", 1)[1], user), AGUI)
                assert result.ok and result.ttft is not None, result.error
                ttft[name].append(result.ttft)
        out = {name: {"ttft_p50_ms": ms(statistics.median(v)), "ttft_p90_ms": ms(pct(v, 0.9))}
               for name, v in ttft.items()}
        out["loom_cpu_ms_per_run"] = ms((loom.cpu_seconds() - cpu0) / (runs * len(stacks)))
        out["loom_rss_mb"] = round(loom.rss_mb())
        agent = out["agent"]["ttft_p50_ms"]
        for name in stacks:
            if name != "agent":
                out[name]["added_ms"] = round(out[name]["ttft_p50_ms"] - agent, 2)
        return out
    finally:
        loom.stop()
        mock.stop()


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 memories, fewer queries and runs")
    p.add_argument("--memories", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    n = args.memories or (2000 if args.quick else 10_000)
    queries, runs = (60, 8) if args.quick else (300, 30)
    with tempfile.TemporaryDirectory(prefix="loom-bench-memory-") as tmp_dir:
        tmp = Path(tmp_dir)
        db = tmp / "memory.db"
        print(f"part 1: search over {n} memories of one user (SQLite store, int8 all-MiniLM-L6-v2 in process)")
        search = asyncio.run(search_latency(db, n, queries))
        print(f"part 2: TTFT over HTTP, {runs} sequential rounds (mock LLM 50 ms + 20 x 5 ms)")
        ttft = asyncio.run(recall_ttft(db, tmp, runs))
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": args.quick, "search": search, "ttft": ttft,
              "loadavg": os.getloadavg()}
    print()
    print(f"search, one user with {n} memories (ms)   p50      p99")
    for mode in ("lexical", "hybrid"):
        print(f"  {mode:<38} {search[mode]['p50_ms']:>7.2f}  {search[mode]['p99_ms']:>7.2f}")
    print(f"  first search, cold index (load from store) {search['cold_index_ms']:>7.1f}")
    print(f"  first search after a write (p50 of 5)      {search['after_write_p50_ms']:>7.1f}")
    print("\nTTFT over HTTP (ms)                       p50      p90    added vs agent")
    for name in ("agent", "memory (0 memories)", "memory (N memories)"):
        row = ttft[name]
        print(f"  {name.replace('N', str(n)):<38} {row['ttft_p50_ms']:>7.1f}  {row['ttft_p90_ms']:>7.1f}"
              f"  {row.get('added_ms', 0.0):>+8.1f}")
    print(f"\nloom CPU per run {ttft['loom_cpu_ms_per_run']} ms, RSS {ttft['loom_rss_mb']} MB, "
          f"load average {report['loadavg'][0]:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"memory-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
