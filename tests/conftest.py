"""Real servers on loopback: the scripted LLM, and loom itself under uvicorn (`loom serve`)."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.llm_server import LLMServer, free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTGRES_URL = os.environ.get("LOOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("LOOM_TEST_REQUIRE_POSTGRES") == "1"  # CI: a missing PostgreSQL is a failure


def without_password(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if parts.password is None and all(key != "password" for key, _ in query):
        return url
    netloc = parts.netloc if parts.password is None else f"{parts.username or ''}@{parts.netloc.rsplit('@', 1)[1]}"
    return parts._replace(netloc=netloc, query=urlencode([(k, v) for k, v in query if k != "password"])).geturl()


@functools.cache
def postgres_unreachable(url: str, timeout: float = 2.0) -> str | None:
    """Why nothing answers at `url`'s (first) host, or None when something does. A connection, not a login: a
    server that refuses the tests' credentials fails their tests rather than skipping them."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise pytest.UsageError(f"LOOM_TEST_POSTGRES_URL is not a PostgreSQL URL ({exc}): "
                                f"{without_password(url)}") from None
    host = (params.get("host") or "/var/run/postgresql").split(",")[0]  # libpq's default: the local socket
    port = int((params.get("port") or "5432").split(",")[0] or 5432)
    try:
        if host.startswith("/"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout)
                sock.connect(f"{host}/.s.PGSQL.{port}")
        else:
            socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before the test's fixtures: their loom server would not even start without the database.
    if item.get_closest_marker("postgres") is None or (why := postgres_unreachable(POSTGRES_URL)) is None:
        return
    where = f"no PostgreSQL answers at {without_password(POSTGRES_URL)} ({why})"
    if REQUIRE_POSTGRES:
        pytest.fail(f"{where}, and LOOM_TEST_REQUIRE_POSTGRES=1 says the tests need one", pytrace=False)
    pytest.skip(f"{where}: set LOOM_TEST_POSTGRES_URL to a server's URL (default user postgres, database test), "
                "or LOOM_TEST_REQUIRE_POSTGRES=1 to make this a failure")


class LoomServer:
    """`loom serve` in its own process group; restartable on the same database."""

    def __init__(self, tmp: Path, **env: str):
        self.tmp = tmp
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "LOOM_LLM_API_KEY": "test-key",
            "LOOM_LLM_MODEL": "scripted",
            "LOOM_LLM_TIMEOUT": "3",
            "LOOM_LLM_MAX_RETRIES": "1",
            "LOOM_EXTRA_TOOLS": "tests.fixture_tools",
            "LOOM_DATABASE_URL": f"sqlite:///{tmp / 'loom.db'}",
            **env,
        }
        self.env.pop("LOOM_DEMO_MODEL", None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"loom-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, move_if_taken: bool = True) -> LoomServer:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([str(BIN / "loom"), "serve", "--port", str(self.port)], cwd=REPO,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if move_if_taken and "address already in use" in self.log()[-500:]:
                    # Another process took the port between free_port() and the bind (or since a restart):
                    # the test needs a server, not that port.
                    self.port = free_port()
                    self.url = f"http://127.0.0.1:{self.port}"
                    return self.start(move_if_taken=False)
                raise RuntimeError(f"loom exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"loom did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def restart(self) -> LoomServer:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---------------------------------------------------------------------------------------------- runs

    def post(self, graph: str, body: dict | bytes, headers: dict | None = None) -> tuple[httpx.Response, list]:
        """POST a run; returns the response and its parsed SSE events (empty for an HTTP error)."""
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", f"{self.url}/agents/{graph}", content=content,
                               headers={"content-type": "application/json", **(headers or {})}) as response:
                raw = response.read().decode()
        events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
        return response, events

    def run(self, graph: str, messages: list[dict], thread_id: str | None = None, headers: dict | None = None,
            **fields) -> list[dict]:
        body = {"threadId": thread_id or new_id(), "runId": new_id(), "messages": messages, **fields}
        response, events = self.post(graph, body, headers)
        assert response.status_code == 200, response.text
        return events


def new_id() -> str:
    return str(uuid.uuid4())


def user(text: str, id: str | None = None) -> dict:
    return {"id": id or new_id(), "role": "user", "content": text}


def event_types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def text_of(events: list[dict]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


def assistant_messages(events: list[dict]) -> list[str]:
    """Assistant texts of a run, in wire order, one per TEXT_MESSAGE_START."""
    texts: dict[str, str] = {}
    for e in events:
        if e["type"] == "TEXT_MESSAGE_START":
            texts[e["messageId"]] = ""
        elif e["type"] == "TEXT_MESSAGE_CONTENT":
            texts[e["messageId"]] += e["delta"]
    return list(texts.values())


@pytest.fixture(scope="session")
def llm():
    server = LLMServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_llm_script(request):
    # Scripts and request logs must not leak between tests; only tests that use the LLM pay for the reset.
    if "llm" in request.fixturenames:
        request.getfixturevalue("llm").reset()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def loom(request, llm, tmp_path_factory):
    """The loom server against the scripted LLM, once with SQLite and once with PostgreSQL."""
    tmp = tmp_path_factory.mktemp(f"loom-{request.param}")
    env = {"LOOM_LLM_BASE_URL": llm.url}
    if request.param == "postgres":
        env["LOOM_DATABASE_URL"] = POSTGRES_URL
    server = LoomServer(tmp, **env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loom_sqlite(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("loom"), LOOM_LLM_BASE_URL=llm.url).start()
    yield server
    server.stop()
from tests.letta_real import real_letta  # noqa: E402,F401 — the real Letta rig, one per session
