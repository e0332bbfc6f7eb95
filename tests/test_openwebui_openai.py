"""End to end: loom added to a real OpenWebUI 0.12 as a plain OpenAI API connection (no pipe).

OpenWebUI (tests/openwebui_rig.py) runs with ENABLE_FORWARD_USER_INFO_HEADERS, so every request to loom names
the OpenWebUI user (X-OpenWebUI-User-Id) and the chat (X-OpenWebUI-Chat-Id); loom's proxy key lets it act for
those users. The scripted LLM behind loom records what reached the model.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid

import httpx
import pytest

from tests.conftest import LoomServer
from tests.openwebui_rig import OpenWebUI

PROXY_KEY = "owui-connection-key"
pytestmark = pytest.mark.timeout(1200)  # the first test may pay for the OpenWebUI venv (once per machine)


@pytest.fixture(scope="module")
def loom(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("owui-openai-loom"), LOOM_LLM_BASE_URL=llm.url,
                        LOOM_API_KEYS=f"{PROXY_KEY}=proxy").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def openwebui(loom, tmp_path_factory):
    server = OpenWebUI(tmp_path_factory.mktemp("owui-openai"))
    with pytest.MonkeyPatch.context() as env:  # read by OpenWebUI at start-up only
        env.setenv("ENABLE_FORWARD_USER_INFO_HEADERS", "true")
        env.setenv("BYPASS_MODEL_ACCESS_CONTROL", "true")  # every user may use the connection's models
        server.start()
    try:
        print(f"\nOpenWebUI up in {server.startup_seconds:.0f} s at {server.url}")
        server.call("POST", "/openai/config/update", {
            "ENABLE_OPENAI_API": True, "OPENAI_API_BASE_URLS": [f"{loom.url}/v1"], "OPENAI_API_KEYS": [PROXY_KEY],
            "OPENAI_API_CONFIGS": {"0": {"enable": True}}})
        yield server
    finally:
        server.stop()


def as_user(openwebui: OpenWebUI, name: str) -> OpenWebUI:
    """The same OpenWebUI, signed in as a new ordinary user the admin adds."""
    email = f"{name.lower()}@example.org"
    openwebui.call("POST", "/api/v1/auths/add", {"name": name, "email": email, "password": "pw-" + name,
                                                 "role": "user"})
    other = copy.copy(openwebui)
    other.user = openwebui.call("POST", "/api/v1/auths/signin", {"email": email, "password": "pw-" + name},
                                auth=False)
    other.token = other.user["token"]
    return other


def reply_in_chat(openwebui: OpenWebUI, chat: str, history: list[dict], question: dict) -> str:
    """A new reply to `question` in an existing chat, as the browser asks for it; its text once saved."""
    reply_id = str(uuid.uuid4())
    openwebui.call("POST", "/api/chat/completions", {
        "model": "agent", "stream": True, "messages": history, "chat_id": chat, "id": reply_id,
        "parent_id": question["id"], "user_message": question})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        message = openwebui.call("GET", f"/api/v1/chats/{chat}")["chat"]["history"]["messages"].get(reply_id) or {}
        if message.get("done"):
            return message["content"]
        time.sleep(0.2)
    raise AssertionError(f"no saved reply {reply_id} in chat {chat}")


def thread_messages(loom: LoomServer, thread: str, user: str) -> httpx.Response:
    return httpx.get(f"{loom.url}/threads/{thread}/messages",
                     headers={"authorization": f"Bearer {PROXY_KEY}", "x-loom-user": user}, timeout=30)


def test_loom_graphs_are_openwebui_models(openwebui):
    assert {"agent", "moa", "memory", "letta"} <= set(openwebui.model_ids())


def test_a_chat_streams_for_the_signed_in_user(openwebui, loom, llm):
    llm.script({"text": "Streaming from loom, no pipe installed."})
    text, chunks = openwebui.chat("agent", [{"role": "user", "content": "hi"}])
    assert text == "Streaming from loom, no pipe installed."
    assert len([c for c in chunks if (c.get("choices") or [{}])[0].get("delta", {}).get("content")]) > 1
    assert f"user={openwebui.user['id']} " in loom.log()


def test_two_users_chats_stay_apart(openwebui, loom, llm):
    bob = as_user(openwebui, "Bob")
    llm.script({"text": "For Ada."}, {"text": "For Bob."})
    ada_message, _ = asyncio.run(openwebui.ui_chat("agent", "I am Ada"))
    bob_message, _ = asyncio.run(bob.ui_chat("agent", "I am Bob"))
    assert (ada_message["content"], bob_message["content"]) == ("For Ada.", "For Bob.")
    ada_thread = f"openwebui-{ada_message['chat_id']}-agent"
    bob_thread = f"openwebui-{bob_message['chat_id']}-agent"
    mine = thread_messages(loom, ada_thread, openwebui.user["id"]).json()["messages"]
    assert [(m["role"], m["content"]) for m in mine] == [("user", "I am Ada"), ("assistant", "For Ada.")]
    assert thread_messages(loom, bob_thread, bob.user["id"]).json()["messages"][0]["content"] == "I am Bob"
    assert thread_messages(loom, ada_thread, bob.user["id"]).status_code == 404  # not Bob's to read


def test_a_regenerate_forks_the_chats_thread(openwebui, loom, llm):
    llm.script({"text": "First."}, {"text": "Second."}, {"text": "Second, again."})
    first, _ = asyncio.run(openwebui.ui_chat("agent", "one"))
    chat = first["chat_id"]
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "First."},
               {"role": "user", "content": "two"}]
    # As the browser continues the chat, then regenerates the answer: a new reply to the same user message.
    question = {"id": str(uuid.uuid4()), "parentId": first["id"], "childrenIds": [], "role": "user",
                "content": "two", "timestamp": int(time.time()), "models": ["agent"]}
    for answer in ("Second.", "Second, again."):
        assert reply_in_chat(openwebui, chat, history, question) == answer
    expected = [("user", "one"), ("assistant", "First."), ("user", "two")]
    for request in llm.requests()[1:]:
        assert [(m["role"], m["content"]) for m in request["body"]["messages"] if m["role"] != "system"] == expected
    stored = thread_messages(loom, f"openwebui-{chat}-agent", openwebui.user["id"]).json()["messages"]
    assert [(m["role"], m["content"]) for m in stored] == [*expected, ("assistant", "Second, again.")]

