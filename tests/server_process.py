"""A test server (one of this folder's `python -m tests.<module>` servers) in a subprocess on a free loopback port:
started until its ready path answers, its output in a log file, stopped by pid."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    module = ""  # `python -m <module> --host 127.0.0.1 --port P`
    ready_path = "/"

    def __init__(self, api_key: str | None = None, extra_args: list[str] = ()):
        self.api_key, self.extra_args = api_key, list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.root = ""
        self.log_path = ""

    def start(self):
        name = self.module.rpartition(".")[2]
        for _attempt in range(3):  # free_port() can race with another process; retry on a new port
            port = free_port()
            self.root = f"http://127.0.0.1:{port}"
            log = tempfile.NamedTemporaryFile("w", prefix=f"{name}_", suffix=".log", delete=False)
            self.log_path = log.name
            args = [sys.executable, "-m", self.module, "--host", "127.0.0.1", "--port", str(port)]
            args += ["--api-key", self.api_key] if self.api_key else []
            self.proc = subprocess.Popen(args + self.extra_args, cwd=REPO_ROOT, stdout=log, stderr=log)
            log.close()
            self._http = httpx.Client(base_url=self.root, timeout=10)
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self._http.get(self.ready_path, headers=headers).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            tail = self.log_text()[-2000:]
            self.stop()
        raise RuntimeError(f"{name} did not start; log:\n{tail}")

    def log_text(self) -> str:
        """The subprocess's stdout/stderr so far (deleted by stop())."""
        return Path(self.log_path).read_text() if self.log_path else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_http", None):
            self._http.close()
        if self.log_path:
            Path(self.log_path).unlink(missing_ok=True)
            self.log_path = ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
