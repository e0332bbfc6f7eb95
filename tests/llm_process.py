"""Runs the scripted LLM server (tests/llm_server.py) in a subprocess and drives its control endpoints."""

from __future__ import annotations

import time
from urllib.parse import quote

from tests.server_process import REPO_ROOT, ServerProcess, free_port  # noqa: F401 — importable from here


class LLMServer(ServerProcess):
    """Runs the server in a subprocess and drives its control endpoints (sync httpx)."""

    module, ready_path = "tests.llm_server", "/v1/models"

    @property
    def url(self) -> str:
        return f"{self.root}/v1" if self.root else ""

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
