"""`loom serve` with nothing configured: the embedded demo model answers, and says so.

The model is tiny and weak; with temperature 0 it is deterministic, and the demo path (constrained tool
arguments, tool narrowing, constrained auto-save) makes the README's examples work: those are asserted.
"""

import json

import httpx
import pytest

from loom.graphs.tools import evaluate
from tests.conftest import LoomServer, event_types, user


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("demo"))
    for name in ("LOOM_LLM_BASE_URL", "LOOM_LLM_MODEL", "LOOM_LLM_API_KEY", "LOOM_EXTRA_TOOLS"):
        server.env.pop(name, None)
    server.env.update(LOOM_LLM_TIMEOUT="60", LOOM_LLM_MAX_RETRIES="0")
    yield server.start()
    server.stop()


def test_health_and_log_say_a_demo_model_is_answering(demo):
    model = httpx.get(f"{demo.url}/health").json()["model"]
    assert model["demo"] is True and model["model"] == "gemma-3-270m"
    assert model["base_url"].startswith("http://127.0.0.1:")
    assert "LOOM_LLM_BASE_URL" in model["note"]
    assert "demo model" in demo.log() and "LOOM_LLM_BASE_URL" in demo.log()


def test_agent_turn_with_forced_tool_call_round_trip(demo):
    events = demo.run("agent", [user("What is 2137*19?")])
    kinds = event_types(events)
    assert kinds[-1] == "RUN_FINISHED", events[-1]
    [start] = [e for e in events if e["type"] == "TOOL_CALL_START"]
    assert start["toolCallName"] in {"calculator", "current_time", "convert_units"}
    assert "TOOL_CALL_ARGS" in kinds
    # The result went back to the model, which was called again (without tools) to answer.
    model_steps = [i for i, e in enumerate(events) if e["type"] == "STEP_STARTED" and e["stepName"] == "call_model"]
    assert len(model_steps) == 2 and kinds.index("TOOL_CALL_RESULT") < model_steps[1]


# What the README's "Try it" promises on the real demo model (temperature 0: deterministic).


def _calls(events: list[dict]) -> list[tuple[str, dict, str]]:
    """(tool name, arguments, result) of each tool call of a run."""
    names = {e["toolCallId"]: e["toolCallName"] for e in events if e["type"] == "TOOL_CALL_START"}
    args = {i: "".join(e["delta"] for e in events if e["type"] == "TOOL_CALL_ARGS" and e["toolCallId"] == i)
            for i in names}
    results = {e["toolCallId"]: e["content"] for e in events if e["type"] == "TOOL_CALL_RESULT"}
    return [(names[i], json.loads(args[i]), results.get(i, "")) for i in names]


def _answer(events: list[dict]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


def test_calculator_example(demo):
    events = demo.run("agent", [user("What is 2137*19?")])
    [(name, args, result)] = _calls(events)
    assert name == "calculator" and evaluate(args["expression"]) == 40603 and result == "40603"
    assert "40603" in _answer(events)


def test_current_time_example(demo):
    events = demo.run("agent", [user("What time is it in Tokyo?")])
    [(name, args, result)] = _calls(events)
    assert name == "current_time" and args == {"timezone": "Asia/Tokyo"} and "+09:00" in result


def test_memory_saves_a_fact_and_recalls_it_next_turn(demo):
    first = demo.run("memory", [user("My name is Ada and I live in Lisbon.")])
    [saved] = [e["value"]["memories"] for e in first if e["type"] == "CUSTOM" and e["name"] == "loom.memory.saved"]
    assert any("Lisbon" in m["content"] for m in saved), saved

    second = demo.run("memory", [user("Where do I live?")])  # a new thread: only memory carries the fact
    [recalled] = [e["value"]["memories"] for e in second
                  if e["type"] == "CUSTOM" and e["name"] == "loom.memory.recalled"]
    assert any("Lisbon" in m["content"] for m in recalled), recalled
    assert "Lisbon" in _answer(second)
