"""`loom serve` with nothing configured: the embedded demo model answers, and says so.

The model is tiny and weak, so only structure is asserted: tokens stream, the forced tool call round trip
completes, nothing about the answer's wording.
"""

import httpx
import pytest

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
    assert sum(k == "TOOL_CALL_ARGS" for k in kinds) > 1  # the arguments streamed token by token
    # The result went back to the model, which was called again (without tools) to answer.
    model_steps = [i for i, e in enumerate(events) if e["type"] == "STEP_STARTED" and e["stepName"] == "call_model"]
    assert len(model_steps) == 2 and kinds.index("TOOL_CALL_RESULT") < model_steps[1]
