"""Numbers -> the benchmark's derived figures, target verdicts and printed table (bench/serving.py)."""

from __future__ import annotations

import statistics

STACKS = ("direct", "loom", "ag-ui-langgraph")
TOKENS_LONG = 2000

# Targets for loom (name, metric key, comparison, limit, unit)
TARGETS = [
    ("TTFT overhead over direct, c=1", "ttft_overhead_ms", "<=", 10.0, "ms"),
    ("total p50 at c=64 / direct", "p50_c64_ratio", "<=", 3.0, "x"),
    ("max runs/s / ag-ui-langgraph", "runs_per_s_vs_peer", ">=", 3.0, "x"),
    ("server CPU-s per 1,000 tokens", "cpu_s_per_1k_tokens", "<=", 0.20, "s"),
    ("greeting response body", "greeting_bytes", "<=", 4096, "B"),
]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def derive(rnd: dict) -> dict:
    """Per-stack metrics of one round; ratios are taken within the round."""
    out = {}
    d_c1, d_load = rnd["c1"]["direct"], rnd["load"]["direct"]
    for name in STACKS:
        c1, load, sat, long = rnd["c1"][name], rnd["load"][name], rnd["sat"][name], rnd["long"][name]
        best = max((load, sat), key=lambda p: p["runs_per_s"] or 0)
        per_run_short = sat["cpu_ms_per_run"] / 1000
        marginal = None
        if long["cpu_s_per_run"] is not None and long["ok"]:
            marginal = round((long["cpu_s_per_run"] - per_run_short) / (TOKENS_LONG - 20) * 1000, 4)
        out[name] = {
            "ttft_c1_ms": c1["ttft_ms"],
            "ttft_overhead_ms": round(c1["ttft_ms"] - d_c1["ttft_ms"], 2)
            if c1["ttft_ms"] and d_c1["ttft_ms"] else None,
            "total_c1_ms": c1["total_ms"],
            "p50_c64_ms": load["total_p50_ms"],
            "ttft_p50_c64_ms": load["ttft_p50_ms"],
            "p50_c64_ratio": round(load["total_p50_ms"] / d_load["total_p50_ms"], 3)
            if load["total_p50_ms"] and d_load["total_p50_ms"] else None,
            "max_runs_per_s": best["runs_per_s"],
            "max_runs_per_s_at_c": best["concurrency"],
            "cpu_ms_per_run": sat["cpu_ms_per_run"],
            "cpu_s_per_1k_tokens": long["cpu_s_per_1k_tokens"],
            "cpu_s_per_1k_tokens_marginal": marginal,
            "bytes_20_tokens": c1["body_bytes"],
            "rss_mb": sat["rss_mb"],
        }
        if "greeting" in rnd:
            out[name]["greeting_bytes"] = rnd["greeting"][name]["body_bytes"]
    peer = out["ag-ui-langgraph"]["max_runs_per_s"]
    for name in STACKS:
        mine = out[name]["max_runs_per_s"]
        out[name]["runs_per_s_vs_peer"] = round(mine / peer, 3) if mine and peer else None
    return out


def aggregate(rounds: list[dict]) -> dict:
    """Median over rounds of every per-round metric (ratios were computed inside each round)."""
    out = {}
    for name in STACKS:
        keys = {k for r in rounds for k in r["derived"][name]}
        out[name] = {k: med([r["derived"][name].get(k) for r in rounds]) for k in sorted(keys)}
        out[name]["max_runs_per_s_at_c"] = rounds[0]["derived"][name]["max_runs_per_s_at_c"]
    return out


def judge(agg: dict) -> list[dict]:
    rows = []
    for label, key, op, limit, unit in TARGETS:
        value = agg["loom"].get(key)
        passed = value is not None and (value <= limit if op == "<=" else value >= limit)
        rows.append({"target": label, "metric": key, "value": value, "op": op, "limit": limit, "unit": unit,
                     "pass": passed})
    return rows


def fmt(v, spec: str = ".1f", suffix: str = "") -> str:
    if v is None:
        return "—"
    return f"{v:{spec}}{suffix}"


def table(agg: dict, targets: list[dict]) -> str:
    cols = [("stack", 16), ("TTFT c=1", 9), ("over direct", 11), ("total c=1", 9), ("p50 c=64", 9),
            ("×direct", 7), ("max runs/s", 10), ("CPU ms/run", 10), ("CPU-s/1k tok", 12), ("(marginal)", 10),
            ("greeting B", 10), ("20-tok B", 8), ("RSS MB", 6)]
    lines = ["  ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(cols))]
    for name in STACKS:
        a = agg[name]
        cells = [name, fmt(a["ttft_c1_ms"], ".1f", " ms"), fmt(a["ttft_overhead_ms"], "+.1f", " ms"),
                 fmt(a["total_c1_ms"], ".0f", " ms"), fmt(a["p50_c64_ms"], ".0f", " ms"),
                 fmt(a["p50_c64_ratio"], ".2f", "×"),
                 fmt(a["max_runs_per_s"], ".1f") + f" @{a['max_runs_per_s_at_c']}",
                 fmt(a["cpu_ms_per_run"], ".1f"), fmt(a["cpu_s_per_1k_tokens"], ".3f"),
                 fmt(a["cpu_s_per_1k_tokens_marginal"], ".3f"), fmt(a.get("greeting_bytes"), ",.0f"),
                 fmt(a["bytes_20_tokens"], ",.0f"), fmt(a["rss_mb"], ".0f")]
        pairs = enumerate(zip(cells, cols, strict=True))
        lines.append("  ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, (_, w)) in pairs))
    lines.append("")
    lines.append("loom targets:")
    for t in targets:
        unit = {"ms": " ms", "x": "×", "s": " CPU-s", "B": " B"}[t["unit"]]
        value = fmt(t["value"], ",.0f" if t["unit"] == "B" else ".3g")
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<34} {value}{unit:<7}"
                     f" (target {t['op']} {t['limit']:g}{unit})")
    return "\n".join(lines)
