"""An OpenPipe stand-in over real HTTP (docs.openpipe.ai/api-reference).

Under ``/api/v1``, ``Authorization: Bearer <key>`` required (``401 {"message"}`` otherwise):

``POST /report``                  -> ``{"status": "ok"}``; the body is recorded
``GET /datasets``                 -> ``{"object": "list", "data": [dataset]}``
``POST /datasets {"name"}``       -> the dataset ``{"object": "dataset", "id", "name", "created", "updated",
                                     "dataset_entry_count", "fine_tune_count"}``
``DELETE /datasets/{id}``         -> ``{"id", "object": "dataset", "deleted": true}``
``POST /datasets/{id}/entries``   -> ``{"object": "dataset.entries.creation", "entries_created", "errors": {...}}``
                                     (entries need non-empty ``messages``; ``split`` ∈ TRAIN, TEST)

Test controls (no auth): ``GET /_debug/reports``, ``GET /_debug/entries``, ``POST /_debug/mode {"mode": "ok" |
"hang" | "fail", "delay_ms"}``, ``POST /_debug/reset``. "hang" holds each request until the mode changes;
"fail" answers 500; ``delay_ms`` delays every answer.

    python -m tests.openpipe_server --port 8200 --api-key opk-test [--delay-ms 2000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.llm_server import free_port

PREFIX = "/api/v1"


class State:
    def __init__(self, api_key: str, delay_ms: float = 0):
        self.api_key = api_key
        self.lock = threading.Lock()
        self.released = threading.Condition(self.lock)
        self.mode = "ok"
        self.delay_ms = delay_ms
        self.reset()

    def reset(self) -> None:
        self.reports: list[dict] = []
        self.datasets: dict[str, dict] = {}
        self.entries: dict[str, list[dict]] = {}
        self.requests = 0


class Handler(BaseHTTPRequestHandler):
    state: State
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    def _body(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""  # read the request before replying
        return json.loads(raw) if raw else None

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        st = self.state
        body = self._body()
        path = self.path.split("?")[0]
        if path.startswith("/_debug/"):
            return self._debug(method, path, body)
        with st.lock:
            st.requests += 1
            while st.mode == "hang":
                st.released.wait()
            mode, delay = st.mode, st.delay_ms
        if delay:
            time.sleep(delay / 1000)
        if not path.startswith(PREFIX):
            return self._reply(404, {"message": "not found"})
        if self.headers.get("authorization") != f"Bearer {st.api_key}":
            return self._reply(401, {"message": "Invalid API key"})
        if mode == "fail":
            return self._reply(500, {"message": "stand-in failure"})
        route = path[len(PREFIX):].rstrip("/")
        parts = route.split("/")
        with st.lock:
            if method == "POST" and route == "/report":
                st.reports.append(body)
                return self._reply(200, {"status": "ok"})
            if route == "/datasets" and method == "GET":
                return self._reply(200, {"object": "list", "data": list(st.datasets.values())})
            if route == "/datasets" and method == "POST":
                if not isinstance(body, dict) or not body.get("name"):
                    return self._reply(400, {"message": "name is required"})
                now = int(time.time() * 1000)
                dataset = {"object": "dataset", "id": str(uuid.uuid4()), "name": body["name"], "created": now,
                           "updated": now, "dataset_entry_count": 0, "fine_tune_count": 0}
                st.datasets[dataset["id"]] = dataset
                st.entries[dataset["id"]] = []
                return self._reply(200, dataset)
            if len(parts) >= 3 and parts[1] == "datasets":
                dataset = st.datasets.get(parts[2])
                if dataset is None:
                    return self._reply(404, {"message": "Dataset not found"})
                if len(parts) == 3 and method == "DELETE":
                    del st.datasets[parts[2]]
                    return self._reply(200, {"id": parts[2], "object": "dataset", "deleted": True})
                if len(parts) == 4 and parts[3] == "entries" and method == "POST":
                    created, errors = 0, []
                    for i, entry in enumerate((body or {}).get("entries") or []):
                        if not entry.get("messages"):
                            errors.append({"object": "dataset.entries.creation.error", "entry_index": i,
                                           "message": "messages must not be empty"})
                        elif entry.get("split") not in (None, "TRAIN", "TEST"):
                            errors.append({"object": "dataset.entries.creation.error", "entry_index": i,
                                           "message": "split must be TRAIN or TEST"})
                        else:
                            st.entries[parts[2]].append(entry)
                            created += 1
                    dataset["dataset_entry_count"] += created
                    return self._reply(200, {"object": "dataset.entries.creation", "entries_created": created,
                                             "errors": {"object": "list", "data": errors}})
        return self._reply(404, {"message": "not found"})

    def _debug(self, method: str, path: str, body) -> None:
        st = self.state
        with st.lock:
            if path == "/_debug/reports":
                return self._reply(200, st.reports)
            if path == "/_debug/entries":
                return self._reply(200, {st.datasets[k]["name"] if k in st.datasets else k: v
                                         for k, v in st.entries.items()})
            if path == "/_debug/requests":
                return self._reply(200, {"requests": st.requests})
            if path == "/_debug/mode":
                st.mode = body.get("mode", st.mode)
                st.delay_ms = body.get("delay_ms", st.delay_ms)
                st.released.notify_all()
                return self._reply(200, {"mode": st.mode, "delay_ms": st.delay_ms})
            if path == "/_debug/reset":
                st.reset()
                st.mode = "ok"
                st.released.notify_all()
                return self._reply(200, {"status": "ok"})
        return self._reply(404, {"message": "not found"})


class OpenPipeServer:
    """The stand-in on a loopback port, in a thread. `url` is the API base (…/api/v1)."""

    def __init__(self, api_key: str = "opk-test", port: int | None = None, delay_ms: float = 0):
        self.state = State(api_key, delay_ms)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}{PREFIX}"
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> OpenPipeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.set_mode("ok")
        self.httpd.shutdown()
        self.httpd.server_close()

    def set_mode(self, mode: str, delay_ms: float | None = None) -> None:
        with self.state.lock:
            self.state.mode = mode
            if delay_ms is not None:
                self.state.delay_ms = delay_ms
            self.state.released.notify_all()

    def reset(self) -> None:
        with self.state.lock:
            self.state.reset()
            self.state.mode = "ok"
            self.state.delay_ms = 0
            self.state.released.notify_all()

    @property
    def reports(self) -> list[dict]:
        with self.state.lock:
            return list(self.state.reports)

    def entries(self, name: str) -> list[dict]:
        with self.state.lock:
            ids = [k for k, d in self.state.datasets.items() if d["name"] == name]
            return [e for k in ids for e in self.state.entries[k]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--api-key", default="opk-test")
    parser.add_argument("--delay-ms", type=float, default=0)
    args = parser.parse_args()
    server = OpenPipeServer(args.api_key, args.port, args.delay_ms)
    print(f"OpenPipe stand-in at {server.url}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
