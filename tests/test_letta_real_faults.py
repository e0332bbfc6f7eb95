"""Sends that fail on the way to the real Letta server (tests/letta_rig.py): a fault-injecting proxy
(tests/letta_fault_proxy.py) sits between loom and Letta and fails chosen message POSTs, before or after Letta
took them. A send Letta never saw is retried with the same otid and lands once; one whose answer was lost is
not sent again (Letta finishes that turn on its own and stores the message once)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import new_id, text_of, user
from tests.letta_fault_proxy import FaultProxy
from tests.letta_real import loom_for
from tests.metrics_scrape import delta, scrape
from tests.test_letta import assert_run_error

SEND = r"^/v1/conversations/[^/]+/messages"  # a turn's POST (the arrival check GETs the same path)


@pytest.fixture(scope="module")
def agent_id(real_letta) -> str:
    return real_letta.new_agent(f"loom-faults-{new_id()[:8]}")


@pytest.fixture(scope="module")
def proxy(real_letta):
    proxy = FaultProxy(real_letta.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def loom(proxy, agent_id, tmp_path_factory):
    server = loom_for(tmp_path_factory.mktemp("loom-letta-faults"), proxy.url, agent_id)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_proxy(proxy):
    proxy.clear()


def sends(proxy) -> list:
    return proxy.requests("POST", SEND)


def stored(real_letta, conversation_id: str) -> list[tuple[str, str, str | None]]:
    """(type, text, otid) of the user and assistant messages Letta holds for the conversation, oldest first."""
    items = real_letta.client().conversations.messages.list(conversation_id, order="asc", limit=100).items
    return [(m.message_type, m.content, m.otid) for m in items
            if m.message_type in ("user_message", "assistant_message")]


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_a_send_letta_never_saw_is_retried_with_the_same_otid_and_lands_once(loom, proxy, real_letta, fault):
    proxy.fail("POST", SEND, fault)
    before = scrape(loom.url)
    events = loom.run("letta", [user("once")])
    assert text_of(events) == "echo: once"
    after = scrape(loom.url)
    assert delta(before, after, "loom_letta_requests_total", outcome="retry") == 1
    failed, landed = sends(proxy)
    assert (failed.action, landed.action, landed.status) == (fault, "forwarded", 200)
    assert failed.body == landed.body  # the same message, the same otid
    [message] = json.loads(landed.body)["messages"]
    held = stored(real_letta, landed.path.split("/")[3])
    assert held == [("user_message", "once", message["otid"]), ("assistant_message", "echo: once", held[1][2])]


@pytest.mark.parametrize("fault, code", [("drop", "LETTA_STREAM_ERROR"), ("502", "LETTA_SERVER_ERROR")])
def test_a_send_whose_answer_was_lost_is_not_sent_twice(loom, proxy, real_letta, fault, code):
    # The model takes a while: when loom looks, Letta's run is still in its first step and has not stored the
    # message yet (it does so when the step ends).
    real_letta.llm.script({"text": "An answer loom never heard.", "ttft_ms": 1500})
    proxy.fail("POST", SEND, fault)
    events = loom.run("letta", [user("only once")])
    assert "did not send it again" in assert_run_error(events, code)
    [attempt] = sends(proxy)
    assert attempt.status == 200  # Letta took it and streamed its answer to the proxy
    [message] = json.loads(attempt.body)["messages"]
    # Letta finished the turn whose client was gone: the message is there once, and so is the answer.
    held = stored(real_letta, attempt.path.split("/")[3])
    assert held == [("user_message", "only once", message["otid"]),
                    ("assistant_message", "An answer loom never heard.", held[1][2])]
