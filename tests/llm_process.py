"""Runs the scripted LLM server (tests/llm_server.py) in a subprocess and drives its control endpoints."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LLMServer:
    """Runs the server in a subprocess and drives its control endpoints (sync httpx)."""

    def __init__(self, api_key: str | None = None, extra_args: list[str] = ()):
        self.api_key, self.extra_args = api_key, list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.root = self.url = ""
        self.log_path = ""

    def start(self) -> LLMServer:
        for _attempt in range(3):  # free_port() can race with another process; retry on a new port
            port = free_port()
            self.root, self.url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1"
            log = tempfile.NamedTemporaryFile("w", prefix="llm_server_", suffix=".log", delete=False)
            self.log_path = log.name
            args = [sys.executable, "-m", "tests.llm_server", "--host", "127.0.0.1", "--port", str(port)]
            args += ["--api-key", self.api_key] if self.api_key else []
            self.proc = subprocess.Popen(args + self.extra_args, cwd=REPO_ROOT, stdout=log, stderr=log)
            log.close()
            self._http = httpx.Client(base_url=self.root, timeout=10)
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self._http.get("/v1/models", headers=headers).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            tail = self.log_text()[-2000:]
            self.stop()
        raise RuntimeError(f"llm_server did not start; log:\n{tail}")

    def log_text(self) -> str:
        """The subprocess's stdout/stderr so far (deleted by stop())."""
        return Path(self.log_path).read_text() if self.log_path else ""

    def _post(self, path: str, payload: dict | None = None) -> None:
        self._http.post(path, json=payload or {}).raise_for_status()

    def script(self, *responses: dict, model: str | None = None) -> None:
        self._post("/_script", {"model": model or "*", "responses": list(responses)})

    def set_model(self, model: str, **behaviour) -> None:
        self._post(f"/_models/{quote(model, safe='')}", behaviour)

    def requests(self, path: str | None = "/v1/chat/completions") -> list[dict]:
        """Request records in arrival order; chat completions only unless ``path`` says otherwise."""
        records = self._http.get("/_requests").raise_for_status().json()
        return [r for r in records if path is None or r["path"] == path]

    def wait_request(self, predicate=lambda r: r["ended_at"] is not None, timeout: float = 5.0) -> dict:
        """Poll until a chat record satisfies ``predicate``. Blocking: from async code use a thread."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.requests():
                if predicate(record):
                    return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"no request matched; records: {self.requests()}")
            time.sleep(0.02)

    def reset(self) -> None:
        self._post("/_reset")

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

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
