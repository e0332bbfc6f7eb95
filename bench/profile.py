"""py-spy around a benchmark phase, and a summary of its collapsed stacks (where the CPU time went).

`py-spy record --format raw` writes one line per distinct stack: `frame;frame;...;leaf COUNT`, each frame
`function (path/file.py:line)`. The summary gives, over all samples of the server process:
- self time by function (the leaf frame, line numbers dropped),
- inclusive time by function (each function counted once per stack),
- self time by package (the leaf frame's top-level module / loom directory),
- named probes: the inclusive share of stacks containing a given frame substring.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def py_spy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Recorder:
    """py-spy record -p PID for the duration of a `with` block (stopped with SIGINT, so it writes out)."""

    def __init__(self, pid: int, out: Path, rate: int = 100, max_seconds: int = 120):
        self.pid, self.out, self.rate, self.max_seconds = pid, out, rate, max_seconds
        self.proc: subprocess.Popen | None = None
        self.log = out.with_suffix(".log")

    def __enter__(self) -> "Recorder":
        exe = py_spy_path()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [exe, "record", "-p", str(self.pid), "-r", str(self.rate), "-d", str(self.max_seconds),
                 "--format", "raw", "-o", str(self.out)], stdout=log, stderr=subprocess.STDOUT)
        import time

        deadline = time.monotonic() + 10  # wait until py-spy has attached
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


def _key(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m["func"], m["file"]


def _package(file: str) -> str:
    parts = file.split("/")
    if parts[0] in ("server", "adapters", "graphs", "bench"):
        return f"loom:{parts[0]}/{parts[-1]}" if parts[0] != "bench" else "bench"
    if not parts[0] or file.startswith("<"):
        return "?"
    head = parts[0].removesuffix(".py")
    if head in ("asyncio", "json", "logging", "uuid", "threading", "concurrent", "contextvars", "copy",
                "typing", "dataclasses", "abc", "functools", "enum", "re", "inspect", "weakref", "selectors",
                "socket", "ssl", "collections", "queue", "sqlite3", "email", "http", "urllib"):
        return f"stdlib:{head}"
    return head


def load(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        stacks.append(([_key(f) for f in body.split(";")], int(count)))
    return stacks


def summarize(path: Path, probes: list[tuple[str, str]] = (), top: int = 15) -> dict:
    stacks = load(path)
    total = sum(c for _, c in stacks) or 1
    self_fn: Counter = Counter()
    incl_fn: Counter = Counter()
    self_pkg: Counter = Counter()
    probe_hits: Counter = Counter()
    for frames, count in stacks:
        leaf = frames[-1]
        self_fn[f"{leaf[0]} ({leaf[1]})"] += count
        self_pkg[_package(leaf[1])] += count
        for key in {f"{f} ({p})" for f, p in frames}:
            incl_fn[key] += count
        joined = ";".join(f"{f} ({p})" for f, p in frames)
        for label, needle in probes:
            if needle in joined:
                probe_hits[label] += count

    def share(counter: Counter, n: int, skip_common: bool = False) -> list[dict]:
        rows = []
        for key, count in counter.most_common():
            if skip_common and count / total > 0.97:
                continue  # frames on (nearly) every stack: the event loop, uvicorn's runner
            rows.append({"name": key, "samples": count, "share": round(count / total, 4)})
            if len(rows) == n:
                break
        return rows

    return {
        "file": str(path),
        "samples": total,
        "self_by_function": share(self_fn, top),
        "inclusive_by_function": share(incl_fn, top, skip_common=True),
        "self_by_package": share(self_pkg, top),
        "probes": [{"name": label, "samples": probe_hits[label], "share": round(probe_hits[label] / total, 4)}
                   for label, _ in probes],
    }


def render(summary: dict, title: str, top: int = 12) -> str:
    out = [f"{title}: {summary['samples']} samples ({summary['file']})"]
    for section, label in (("self_by_package", "self time by package"),
                           ("self_by_function", "self time by function"),
                           ("inclusive_by_function", "inclusive time by function (frames on >97% of stacks hidden)"),
                           ("probes", "probes (inclusive share of stacks containing the frame)")):
        out.append(f"  {label}:")
        for row in summary[section][:top]:
            out.append(f"    {row['share'] * 100:5.1f}%  {row['name']}")
    return "\n".join(out)


if __name__ == "__main__":  # summarize a saved raw profile: python -m bench.profile FILE.raw
    print(render(summarize(Path(sys.argv[1])), sys.argv[1], top=25))
