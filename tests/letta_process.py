"""Runs the stand-in Letta server (tests/letta_server.py) in a subprocess and drives its control endpoints."""

from __future__ import annotations

import time

from tests.server_process import ServerProcess


class LettaServer(ServerProcess):
    """The stand-in on a free loopback port, and its control endpoints (sync httpx)."""

    module, ready_path = "tests.letta_server", "/_requests"

    @property
    def url(self) -> str:
        return self.root

    def script(self, *turns: dict) -> None:
        self._http.post("/_script", json={"responses": list(turns)}).raise_for_status()

    def reset(self, log_only: bool = False) -> None:
        self._http.post("/_reset", json={"log_only": log_only}).raise_for_status()

    def requests(self, path_part: str = "/messages", method: str = "POST") -> list[dict]:
        return [r for r in self._http.get("/_requests").raise_for_status().json()
                if path_part in r["path"] and r["method"] == method]

    def state(self) -> dict:
        return self._http.get("/_state").raise_for_status().json()

    def wait(self, predicate, timeout: float = 10.0):
        """Poll the request log until `predicate(records)` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while not (value := predicate(self._http.get("/_requests").json())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met; requests: {self._http.get('/_requests').json()}")
            time.sleep(0.02)
        return value
