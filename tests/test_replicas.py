"""loom for a team: two `loom serve` replicas on one PostgreSQL, workers, SIGTERM drain, /ready.

Real processes throughout: the replicas are `loom serve` under uvicorn, killed with real signals; the database
outage for /ready is a TCP relay in front of PostgreSQL that the test closes.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import POSTGRES_URL, LoomServer, new_id, text_of, user

LEASE_SECONDS = 3
GRACE_SECONDS = 2

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def replicas(llm, tmp_path_factory):
    """Replicas A and B: separate processes and ports, one database, no shared memory."""
    tmp = tmp_path_factory.mktemp("replicas")
    env = {"LOOM_LLM_BASE_URL": llm.url, "LOOM_DATABASE_URL": POSTGRES_URL, "LOOM_LLM_TIMEOUT": "30",
           "LOOM_RUN_LEASE_SECONDS": str(LEASE_SECONDS), "LOOM_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS)}
    servers = [LoomServer(tmp, **env).start(), LoomServer(tmp, **env).start()]
    yield servers
    for server in servers:
        server.stop()


def body(thread_id: str, messages: list[dict]) -> dict:
    return {"threadId": thread_id, "runId": new_id(), "messages": messages}


def start_stream(server: LoomServer, payload: dict):
    """Open a run's stream and wait for RUN_STARTED; returns (client, response, line iterator)."""
    client = httpx.Client(timeout=30)
    response = client.send(client.build_request("POST", f"{server.url}/agents/agent", json=payload), stream=True)
    assert response.status_code == 200, response.read()
    lines = response.iter_lines()
    assert "RUN_STARTED" in next(lines)
    return client, response, lines


def test_alternate_turns_across_replicas_match_one_server(replicas, llm):
    """Turn by turn, A then B then A gives the model exactly what A alone would: full histories resent by the
    client and new messages only (which loom reconciles against the thread it stored)."""
    a, b = replicas

    def conversation(servers: list[LoomServer]) -> list[list[tuple[str, str]]]:
        llm.reset()
        llm.script({"text": "Hello, Ada."}, {"text": "Your name is Ada."}, {"text": "Bye."}, {"text": "Again."})
        thread, u1 = new_id(), user("I am Ada")
        first = servers[0].run("agent", [u1], thread)
        a1 = {"id": next(e["messageId"] for e in first if e["type"] == "TEXT_MESSAGE_START"),
              "role": "assistant", "content": text_of(first)}
        u2 = user("who am I?")
        servers[1].run("agent", [u1, a1, u2], thread)  # the full history, as AG-UI clients send it
        servers[2].run("agent", [user("bye")], thread)  # a new message only
        servers[3].run("agent", [u1, a1, u2, user("and again")], thread)
        return [[(m["role"], m["content"]) for m in r["body"]["messages"] if m["role"] != "system"]
                for r in llm.requests()]

    alone = conversation([a, a, a, a])
    assert alone[1][-1] == ("user", "who am I?") and len(alone[1]) == 3
    assert conversation([a, b, a, b]) == alone


def test_concurrent_runs_on_one_thread_through_both_replicas(replicas, llm):
    a, b = replicas
    llm.script({"text": "only one", "ttft_ms": 1000}, {"text": "only one", "ttft_ms": 1000})
    thread, message = new_id(), user("hi")
    barrier = threading.Barrier(2)

    def post(server: LoomServer) -> int:
        barrier.wait()
        response, _ = server.post("agent", body(thread, [message]))
        return response.status_code

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(post, replicas))
    assert statuses == [200, 409]
    assert len(llm.requests()) == 1


def test_a_run_longer_than_the_lease_keeps_its_thread(replicas, llm):
    """The holder renews its lease while it streams: the thread stays busy on the other replica throughout."""
    a, b = replicas
    llm.script({"text": "slow but alive", "ttft_ms": (LEASE_SECONDS * 2) * 1000}, {"text": "next"})
    thread, message = new_id(), user("hi")
    client, _, lines = start_stream(a, body(thread, [message]))
    try:
        started = time.monotonic()
        while time.monotonic() - started < LEASE_SECONDS * 1.5:
            response, _ = b.post("agent", body(thread, [message]))
            assert response.status_code == 409, "the lease lapsed while its run was still streaming"
            time.sleep(0.3)
        assert '"RUN_FINISHED"' in "".join(lines)
    finally:
        client.close()
    assert text_of(b.run("agent", [message], thread)) == "next"  # released the moment the run ended


def test_sigkill_of_the_lease_holder_frees_the_thread_within_the_lease(replicas, llm):
    a, b = replicas
    llm.script({"text": "never sent", "ttft_ms": 20000}, {"text": "after the crash"})
    thread, message = new_id(), user("hi")
    client, _, _ = start_stream(a, body(thread, [message]))
    try:
        os.killpg(a.process.pid, signal.SIGKILL)
        a.process.wait()
        killed_at = time.monotonic()
        response, _ = b.post("agent", body(thread, [message]))
        assert response.status_code == 409 and response.json()["error"]["code"] == "thread_busy"
        while (response := b.post("agent", body(thread, [message]))[0]).status_code == 409:
            assert time.monotonic() - killed_at < LEASE_SECONDS + 1.5, "the dead replica's lease did not expire"
            time.sleep(0.2)
        assert response.status_code == 200
        assert time.monotonic() - killed_at >= LEASE_SECONDS - 1  # held until it expired, not dropped at once
    finally:
        client.close()
        a.start()  # the crashed replica comes back for the next tests


def test_sigterm_drains_then_ends_runs_with_a_terminal_error(replicas, llm):
    a, b = replicas
    llm.script({"text": "too slow", "ttft_ms": 20000}, {"text": "in time", "ttft_ms": 700}, {"text": "retried"})
    slow_thread, slow_message = new_id(), user("slow one")
    client1, slow, slow_lines = start_stream(a, body(slow_thread, [slow_message]))
    llm.wait_request(lambda r: True)
    client2, quick, quick_lines = start_stream(a, body(new_id(), [user("quick one")]))
    try:
        os.kill(a.process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.2)  # the handler runs on the server's event loop
        refused = httpx.post(f"{a.url}/agents/agent", json=body(new_id(), [user("new")]), timeout=5)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
        ready = httpx.get(f"{a.url}/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["failing"] == "shutdown"
        assert '"RUN_FINISHED"' in "".join(quick_lines)  # finished within the grace period
        rest = "".join(slow_lines)
        assert '"RUN_ERROR"' in rest and '"code":"SERVER_SHUTTING_DOWN"' in rest and "RUN_FINISHED" not in rest
        assert GRACE_SECONDS - 0.5 < time.monotonic() - signalled < GRACE_SECONDS + 3
        assert a.process.wait(10) == 0
    finally:
        client1.close()
        client2.close()
    # The thread is free at once (lease released, not expired) and holds nothing of the cut-off run.
    retried = b.run("agent", [slow_message], slow_thread)
    assert text_of(retried) == "retried"
    sent = [(m["role"], m["content"]) for m in llm.requests()[-1]["body"]["messages"] if m["role"] != "system"]
    assert sent == [("user", "slow one")]
    a.start()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_workers_share_the_port_and_both_answer(llm, tmp_path, database):
    env = {"LOOM_LLM_BASE_URL": llm.url, "LOOM_WORKERS": "2"}
    if database == "postgres":
        env["LOOM_DATABASE_URL"] = POSTGRES_URL
    server = LoomServer(tmp_path, **env).start()
    try:
        pids, deadline = set(), time.monotonic() + 20
        with ThreadPoolExecutor(8) as pool:
            while len(pids) < 2 and time.monotonic() < deadline:
                pids |= set(pool.map(lambda _: httpx.get(f"{server.url}/health", timeout=5).json()["pid"],
                                     range(16)))
        assert len(pids) == 2 and server.process.pid not in pids
        llm.script(*({"text": f"answer {i}"} for i in range(6)))
        thread, history = new_id(), []
        for i in range(6):  # turns of one thread land on either worker and continue it
            history.append(user(f"turn {i}"))
            events = server.run("agent", history, thread)
            assert text_of(events) == f"answer {i}"
            history.append({"id": next(e["messageId"] for e in events if e["type"] == "TEXT_MESSAGE_START"),
                            "role": "assistant", "content": text_of(events)})
        sent = [m["content"] for m in llm.requests()[-1]["body"]["messages"] if m["role"] != "system"]
        assert sent == [m["content"] for m in history[:-1]]
        os.kill(server.process.pid, signal.SIGTERM)  # the supervisor stops its workers
        assert server.process.wait(15) == 0
    finally:
        server.stop()


class Relay:
    """A TCP relay to PostgreSQL that the test can cut, as a network outage would."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_ready_names_the_database_when_it_is_unreachable(llm, tmp_path):
    parts = urlsplit(POSTGRES_URL)
    relay = Relay((parts.hostname, parts.port or 5432))
    url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}"))
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL=llm.url, LOOM_DATABASE_URL=url).start()
    try:
        ready = httpx.get(f"{server.url}/ready", timeout=10)
        assert ready.status_code == 200 and "agent" in ready.json()["graphs"]
        relay.cut()
        ready = httpx.get(f"{server.url}/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["failing"] == "database" and "unreachable" in ready.json()["message"]
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200  # liveness is not readiness
        refused = httpx.post(f"{server.url}/agents/agent", json=body(new_id(), [user("hi")]), timeout=15)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "database_unavailable"
    finally:
        server.stop()
