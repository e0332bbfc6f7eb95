"""Thread ownership: another user naming a thread gets the 404 of a missing thread, and changes nothing.

One loom per database with three keys: alice's, bob's, and a trusted proxy's (which names the user per request).
Bob attacks alice's threads through every endpoint that takes a thread id, with his own key and through the
proxy; afterwards alice's threads are exactly as she left them (her next turn and her resume work as before).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import POSTGRES_URL, LoomServer, new_id, text_of, user

ALICE = {"authorization": "Bearer ka"}
BOB = {"authorization": "Bearer kb"}
PROXY = {"authorization": "Bearer kp"}


def tool_call(name: str, args: dict) -> dict:
    return {"id": f"call_{new_id()[:8]}", "name": name, "arguments": args}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def team(request, llm, tmp_path_factory):
    env = {"LOOM_LLM_BASE_URL": llm.url, "LOOM_API_KEYS": "ka=user:alice,kb=user:bob,kp=proxy",
           # The dataset route checks ownership before it would ever reach OpenPipe (nothing listens here).
           "LOOM_OPENPIPE_API_KEY": "op-test", "LOOM_OPENPIPE_BASE_URL": "http://127.0.0.1:9/api/v1"}
    if request.param == "postgres":
        env["LOOM_DATABASE_URL"] = POSTGRES_URL
    server = LoomServer(tmp_path_factory.mktemp(f"team-{request.param}"), **env).start()
    yield server
    server.stop()


def post_run(server: LoomServer, body: dict, headers: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/agents/agent", json=body, headers=headers, timeout=30)


def dataset(server: LoomServer, thread_id: str, headers: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/threads/{thread_id}/dataset", json={"dataset": "d"}, headers=headers,
                      timeout=30)


def missing_body(server: LoomServer, thread_id: str) -> dict:
    """The 404 body of a thread that does not exist, as it would read for `thread_id`."""
    absent = f"absent-{new_id()}"
    response = dataset(server, absent, ALICE)
    assert response.status_code == 404
    return json.loads(response.text.replace(absent, thread_id))


# Bob, as himself (his key) and as the proxy names him: run headers, run fields, REST headers.
ATTACKERS = {
    "user key": (BOB, {}, BOB),
    "proxy key": (PROXY, {"forwardedProps": {"user": {"id": "bob"}}}, {**PROXY, "x-loom-user": "bob"}),
}


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_another_users_thread_is_not_found_everywhere_and_unchanged(team, llm, attacker):
    run_headers, run_fields, rest_headers = ATTACKERS[attacker]
    delete = tool_call("delete_records", {"table": "sessions"})
    llm.script({"text": "Hello Alice."}, {"tool_calls": [delete]}, {"text": "Your earlier question was hi."},
               {"text": "Deleted."})

    chat, u1 = new_id(), user("hi, I am Alice")
    first = team.run("agent", [u1], chat, headers=ALICE)
    [a1] = [{"id": e["messageId"], "role": "assistant", "content": "Hello Alice."}
            for e in first if e["type"] == "TEXT_MESSAGE_START"]
    pending_thread, p1 = new_id(), user("clear the sessions table")
    interrupted = team.run("agent", [p1], pending_thread, headers=ALICE)
    [interrupt] = interrupted[-1]["outcome"]["interrupts"]
    calls_before = len(llm.requests())

    def as_bob(thread_id: str, messages: list[dict], **fields) -> dict:
        return {"threadId": thread_id, "runId": new_id(), "messages": messages, **run_fields, **fields}

    attempts = {
        "new message": as_bob(chat, [user("bob here")]),
        "her history plus his message": as_bob(chat, [u1, a1, user("what did she say?")]),
        "regenerate (her message ids re-sent)": as_bob(chat, [u1]),
        "edit of her message": as_bob(chat, [{**u1, "content": "edited by bob"}]),
        "new message on her interrupted thread": as_bob(pending_thread, [user("approve it")]),
        "resume with a made-up id": as_bob(pending_thread, [p1],
                                           resume=[{"interruptId": "made-up", "status": "resolved"}]),
        "resume with her interrupt id": as_bob(pending_thread, [p1],
                                               resume=[{"interruptId": interrupt["id"], "status": "resolved"}]),
    }
    for what, body in attempts.items():
        response = post_run(team, body, run_headers)
        assert response.status_code == 404, (what, response.text)
        assert response.json() == missing_body(team, body["threadId"]), what
    for thread_id in (chat, pending_thread):
        response = dataset(team, thread_id, rest_headers)
        assert response.status_code == 404
        assert response.json() == missing_body(team, thread_id)
    assert len(llm.requests()) == calls_before, "a refused request reached the model"

    # Alice's threads are as she left them: her next turn sees only her history, her interrupt is still open.
    second = team.run("agent", [u1, a1, user("what did I ask first?", "u2")], chat, headers=ALICE)
    assert text_of(second) == "Your earlier question was hi."
    sent = [(m["role"], m["content"]) for m in llm.requests()[-1]["body"]["messages"] if m["role"] != "system"]
    assert sent == [("user", u1["content"]), ("assistant", "Hello Alice."), ("user", "what did I ask first?")]
    resumed = team.run("agent", [p1], pending_thread, headers=ALICE,
                       resume=[{"interruptId": interrupt["id"], "status": "resolved"}])
    assert "deleted all records of sessions" in json.dumps(resumed)
    assert text_of(resumed) == "Deleted."


def test_proxy_named_users_own_their_threads(team, llm):
    """Through one proxy key, the named users are separate owners; the same thread id is each user's own."""
    llm.script({"text": "for carol"})
    thread = new_id()
    carol = {"forwardedProps": {"user": {"id": "carol"}}}
    team.run("agent", [user("hi")], thread, headers=PROXY, **carol)
    dave = post_run(team, {"threadId": thread, "runId": new_id(), "messages": [user("hi")],
                           "forwardedProps": {"user": {"id": "dave"}}}, PROXY)
    assert dave.status_code == 404 and dave.json()["error"]["code"] == "thread_not_found"
    # Owned by the user the proxy named: alice, with a key of her own, cannot reach it either.
    assert post_run(team, {"threadId": thread, "runId": new_id(), "messages": [user("x")]}, ALICE).status_code == 404


def test_open_mode_threads_belong_to_local(llm, tmp_path):
    """Without keys (loopback only) runs act for user `local`, who owns their threads; a named user does not."""
    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL=llm.url).start()
    try:
        llm.script({"text": "one"}, {"text": "two"})
        thread = new_id()
        server.run("agent", [user("hi")], thread)
        other = post_run(server, {"threadId": thread, "runId": new_id(), "messages": [user("x")],
                                  "forwardedProps": {"user": {"id": "mallory"}}}, {})
        assert other.status_code == 404
        assert text_of(server.run("agent", [user("again")], thread)) == "two"
    finally:
        server.stop()


def test_threads_stored_before_ownership_belong_to_their_first_user(llm, tmp_path):
    """Upgrading: a database whose threads predate the ownership table adopts each thread's first user."""
    import sqlite3

    server = LoomServer(tmp_path, LOOM_LLM_BASE_URL=llm.url, LOOM_API_KEYS="ka=user:alice,kb=user:bob").start()
    llm.script({"text": "A1"}, {"text": "A2"})
    thread = new_id()
    server.run("agent", [user("hi")], thread, headers=ALICE)
    server.stop()
    with sqlite3.connect(tmp_path / "loom.db") as db:
        db.execute("DROP TABLE loom_threads")  # as before the upgrade: checkpoints only
    server.start()
    try:
        bob = post_run(server, {"threadId": thread, "runId": new_id(), "messages": [user("x")]}, BOB)
        assert bob.status_code == 404
        assert text_of(server.run("agent", [user("more")], thread, headers=ALICE)) == "A2"
    finally:
        server.stop()
