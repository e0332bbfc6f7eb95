"""py-spy around a benchmark phase, and a summary of its collapsed stacks (where the CPU time went).

`py-spy record --format raw --threads --full-filenames` writes one line per distinct stack:
`thread;frame;...;leaf COUNT`, each frame `function (/path/file.py:line)`. The summary splits the samples
into the event-loop thread (where every request, graph step and SSE write of the server runs) and the other
threads (the default thread pool, aiosqlite's connection threads). In this container py-spy's idle detection
counts a pool thread blocked in `queue.get()` as active when it is woken up; those samples are reported as
"thread wake-ups" and kept out of the function breakdown. For the event-loop thread it gives:
- self time by package and by function (the leaf frame, line numbers dropped),
- inclusive time by function (each function counted once per stack; frames on >97% of stacks hidden),
- named probes: the share of stacks containing a given frame (substring match on `function (file)`).
Shares are of the event-loop thread's samples. `Runner.run` as a leaf is uvloop's C code (polling, socket
reads/writes done by the loop, callback dispatch): py-spy attributes it to the Python frame that entered it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
REPO = str(Path(__file__).resolve().parent.parent) + "/"
STDLIB = sysconfig.get_paths()["stdlib"] + "/"
# Leaf frames of a pool thread blocked in queue.get() (function, file suffix, source text of the line).
_WAITS = (("_worker", "concurrent/futures/thread.py", "work_queue.get("),
          ("_connection_worker_thread", "aiosqlite/core.py", "tx.get("))


def py_spy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Recorder:
    """py-spy record -p PID for the duration of a `with` block (stopped with SIGINT, so it writes out)."""

    def __init__(self, pid: int, out: Path, rate: int = 100, max_seconds: int = 120):
        self.pid, self.out, self.rate, self.max_seconds = pid, out, rate, max_seconds
        self.proc: subprocess.Popen | None = None
        self.log = out.with_suffix(".log")

    def __enter__(self) -> Recorder:
        exe = py_spy_path()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [exe, "record", "-p", str(self.pid), "-r", str(self.rate), "-d", str(self.max_seconds),
                 "--format", "raw", "--threads", "--full-filenames", "-o", str(self.out)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15  # wait until py-spy has attached
        while time.monotonic() < deadline and "Sampling" not in self.log.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"py-spy failed: {self.log.read_text()[-1000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _short(path: str) -> tuple[str, str]:
    """(display path, package) for a full file name."""
    if "/site-packages/" not in path and path.startswith(REPO):
        rel = path[len(REPO):]
        return rel, f"loom {rel.split('/')[0]}/" if "/" in rel else "loom"
    if "/site-packages/" in path:
        rel = path.split("/site-packages/", 1)[1]
        parts = rel.split("/")
        package = parts[0].removesuffix(".py")
        if package == "langgraph" and len(parts) > 2:
            package = f"langgraph.{parts[1]}"
        return rel, package
    if path.startswith(STDLIB) or "/lib/python3" in path:
        rel = path.split("/lib/python3", 1)[1].split("/", 1)[-1] if "/lib/python3" in path else path
        return rel, f"stdlib {rel.split('/')[0].removesuffix('.py')}"
    return path, path or "?"


def _is_wait(frame: str) -> bool:
    m = _FRAME.match(frame.strip())
    if not m or not m["line"]:
        return False
    for func, suffix, text in _WAITS:
        if m["func"] == func and m["file"].endswith(suffix):
            import linecache

            return text in linecache.getline(m["file"], int(m["line"]))
    return False


def _frame(frame: str) -> tuple[str, str]:
    """(`function (short/path.py)`, package)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "?"
    short, package = _short(m["file"])
    return f"{m['func']} ({short})", package


def load(path: Path) -> list[tuple[str, list[tuple[str, str]], int]]:
    """[(thread label, frames root->leaf, count)]."""
    stacks = []
    for line in path.read_text().splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        thread, *frames = body.split(";")
        if frames and _is_wait(frames[-1]):
            thread = "wake-ups"
        stacks.append((thread, [_frame(f) for f in frames], int(count)))
    return stacks


def _task_frames(frames: list[tuple[str, str]]) -> list[str]:
    """The frames above the event loop (`Runner.run`): the task or callback that was running."""
    names = [f for f, _ in frames]
    for i in range(len(names) - 1, -1, -1):
        if names[i].startswith("Runner.run ("):
            return names[i + 1:]
    return names


def breakdown(stacks, buckets: list[tuple[str, tuple[str, ...]]]) -> Counter:
    """Each event-loop sample in exactly one bucket: the first bucket (in list order) with a needle in any
    frame above the event loop; samples with no frame above the loop are uvloop's own C code."""
    out: Counter = Counter()
    for frames, count in stacks:
        task = _task_frames(frames)
        if not task:
            out["event loop itself (uvloop C: polling, callbacks, socket I/O)"] += count
            continue
        joined = ";".join(task)
        for label, needles in buckets:
            if any(n in joined for n in needles):
                out[label] += count
                break
        else:
            out["other"] += count
    return out


def summarize(path: Path, probes: list[tuple[str, str]] = (), top: int = 15,
              buckets: list[tuple[str, tuple[str, ...]]] = (), cpu_s: float | None = None, runs: int = 0,
              tokens: int = 0) -> dict:
    """`cpu_s` (the process CPU measured from /proc over the profiled phase) turns bucket shares into CPU
    per run / per 1,000 tokens. Sample counts themselves overstate CPU on a busy machine: py-spy counts a
    thread that is runnable but waiting for a core as active."""
    stacks = load(path)
    everything = sum(c for _, _, c in stacks) or 1
    # The event-loop thread is the one running uvicorn's Server.run.
    loop_threads = Counter(t for t, frames, c in stacks if any(f.startswith("Server.run ") for f, _ in frames))
    loop_thread = loop_threads.most_common(1)[0][0] if loop_threads else None
    main = [(frames, c) for t, frames, c in stacks if t == loop_thread and frames]
    total = sum(c for _, c in main) or 1
    self_fn: Counter = Counter()
    incl_fn: Counter = Counter()
    self_pkg: Counter = Counter()
    probe_hits: Counter = Counter()
    for frames, count in main:
        leaf, package = frames[-1]
        if leaf.startswith("Runner.run ("):
            leaf, package = "event loop: uvloop C code (Runner.run)", "event loop (uvloop)"
        self_fn[leaf] += count
        self_pkg[package] += count
        for name in {f for f, _ in frames}:
            incl_fn[name] += count
        joined = ";".join(f for f, _ in frames)
        for label, needle in probes:
            if needle in joined:
                probe_hits[label] += count
    other_leaf: Counter = Counter()
    for thread, frames, count in stacks:
        if thread == "wake-ups":
            other_leaf["pool-thread wake-ups (blocked in queue.get)"] += count
        elif thread != loop_thread and frames:
            other_leaf[frames[-1][0]] += count

    def rows(counter: Counter, n: int, base: int, skip_common: bool = False) -> list[dict]:
        out = []
        for key, count in counter.most_common():
            if skip_common and count / base > 0.97:
                continue
            out.append({"name": key, "samples": count, "share": round(count / base, 4)})
            if len(out) == n:
                break
        return out

    parts = breakdown(main, buckets) if buckets else Counter()
    per_run = (lambda n: round(n / total * cpu_s / runs * 1000, 2)) if runs and cpu_s else (lambda n: None)
    per_1k = (lambda n: round(n / total * cpu_s / tokens * 1000, 4)) if tokens and cpu_s else (lambda n: None)
    return {
        "file": str(path),
        "breakdown": [{"name": k, "samples": v, "share": round(v / total, 4), "cpu_ms_per_run": per_run(v),
                       "cpu_s_per_1k_tokens": per_1k(v)} for k, v in parts.most_common()],
        "samples_all_threads": everything,
        "samples_event_loop": total,
        "event_loop_share_of_all": round(total / everything, 4),
        "self_by_package": rows(self_pkg, top, total),
        "self_by_function": rows(self_fn, top, total),
        "inclusive_by_function": rows(incl_fn, top, total, skip_common=True),
        "probes": [{"name": label, "samples": probe_hits[label], "share": round(probe_hits[label] / total, 4)}
                   for label, _ in probes],
        "other_threads": rows(other_leaf, 5, everything),
    }


def render(summary: dict, title: str, top: int = 12) -> str:
    out = [f"{title}: {summary['samples_event_loop']} event-loop samples "
           f"({summary['event_loop_share_of_all'] * 100:.0f}% of {summary['samples_all_threads']}); "
           f"shares below are of the event-loop thread  [{summary['file']}]"]
    if summary.get("breakdown"):
        out.append("  exclusive breakdown (each sample counted once, first matching bucket; CPU = share x "
                   "measured process CPU):")
        for row in summary["breakdown"]:
            extra = ""
            if row.get("cpu_ms_per_run") is not None:
                extra = f"  {row['cpu_ms_per_run']:7.2f} CPU-ms/run"
            if row.get("cpu_s_per_1k_tokens") is not None:
                extra += f"  {row['cpu_s_per_1k_tokens']:.4f} CPU-s/1k tokens"
            out.append(f"    {row['share'] * 100:5.1f}%{extra}  {row['name']}")
    for section, label in (("probes", "probes (share of stacks containing the frame)"),
                           ("self_by_package", "self time by package"),
                           ("self_by_function", "self time by function"),
                           ("inclusive_by_function", "inclusive time by function")):
        if not summary[section]:
            continue
        out.append(f"  {label}:")
        for row in summary[section][:top]:
            out.append(f"    {row['share'] * 100:5.1f}%  {row['name']}")
    if summary["other_threads"]:
        out.append("  other threads (share of all samples): " + "; ".join(
            f"{r['share'] * 100:.1f}% {r['name']}" for r in summary["other_threads"][:3]))
    return "\n".join(out)


if __name__ == "__main__":  # summarize a saved raw profile: python -m bench.profile FILE.raw
    from bench.serving import LOOM_BUCKETS, LOOM_PROBES

    print(render(summarize(Path(sys.argv[1]), LOOM_PROBES, buckets=LOOM_BUCKETS), sys.argv[1], top=25))
