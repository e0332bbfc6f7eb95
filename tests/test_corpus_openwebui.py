"""The OpenWebUI pipe on the corpus graphs (tests/corpus/), called as OpenWebUI calls it, against `loom serve`
serving the corpus's own langgraph.json: the models it lists, a second turn, a team whose agents are named in
the status line, and a free-text interrupt asked in OpenWebUI's input dialog."""

from __future__ import annotations

import uuid

import pytest

from loom.adapters.openwebui.pipe import Pipe
from tests.conftest import LoomServer
from tests.test_agui_clients import tool_call
from tests.test_corpus import CORPUS, CORPUS_GRAPHS

PROXY_KEY = "corpus-pipe-key"


@pytest.fixture(scope="module")
def corpus(llm, tmp_path_factory):
    server = LoomServer(tmp_path_factory.mktemp("corpus-pipe"), LOOM_LLM_BASE_URL=llm.url, LOOM_GRAPHS=str(CORPUS),
                        OPENAI_BASE_URL=llm.url, LOOM_API_KEYS=f"{PROXY_KEY}=proxy").start()
    yield server
    server.stop()


class Recorder:
    """`__event_emitter__`: keeps what the pipe emits."""

    def __init__(self):
        self.events: list[dict] = []

    async def __call__(self, event: dict) -> None:
        self.events.append(event)

    def statuses(self) -> list[str]:
        return [e["data"]["description"] for e in self.events if e["type"] == "status"]


def pipe_for(server: LoomServer) -> Pipe:
    pipe = Pipe()
    pipe.valves = Pipe.Valves(loom_url=server.url, api_key=PROXY_KEY)
    return pipe


async def ask(pipe: Pipe, graph: str, messages: list[dict], chat_id: str, **dunder) -> str:
    user = {"id": "owui-corpus", "name": "Ada", "email": "ada@example.org", "role": "user",
            "valves": Pipe.UserValves()}
    result = await pipe.pipe({"model": f"loom.{graph}", "messages": messages, "stream": True}, __user__=user,
                             __chat_id__=chat_id, **{f"__{k}__": v for k, v in dunder.items()})
    return "".join([item async for item in result])


async def test_every_corpus_graph_is_an_openwebui_model(corpus):
    assert CORPUS_GRAPHS <= {m["id"] for m in await pipe_for(corpus).pipes()}


@pytest.mark.parametrize("graph", ["react", "create_agent", "deep", "factory", "notes", "plain"])
async def test_two_turns_in_one_chat(corpus, llm, graph):
    llm.script({"text": "First answer."}, {"text": "Second answer."})
    pipe, chat_id = pipe_for(corpus), str(uuid.uuid4())
    first = await ask(pipe, graph, [{"role": "user", "content": "hello"}], chat_id)
    assert first.strip() == "First answer."
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first.strip()},
               {"role": "user", "content": "and again"}]
    assert (await ask(pipe, graph, history, chat_id)).strip() == "Second answer."
    sent = [m["content"] for m in llm.requests()[-1]["body"]["messages"] if m["role"] in ("user", "assistant")]
    assert sent[-3:] == ["hello", "First answer.", "and again"]


async def test_team_status_names_the_agent_answering(corpus, llm):
    llm.script({"tool_calls": [tool_call("transfer_to_research_expert", {})]},
               {"text": "Paris is sunny today."},
               {"text": "The expert says Paris is sunny."})
    recorder = Recorder()
    text = await ask(pipe_for(corpus), "supervisor", [{"role": "user", "content": "Paris weather?"}],
                     str(uuid.uuid4()), event_emitter=recorder)
    assert "Paris is sunny today." in text and text.rstrip().endswith("The expert says Paris is sunny.")
    statuses = recorder.statuses()
    assert "research_expert is answering…" in statuses
    assert statuses.index("research_expert is answering…") < statuses.index("supervisor is answering…")
    assert 'name="transfer_to_research_expert"' in text  # the hand-off, as a tool call block


async def test_free_text_interrupt_is_an_input_dialog_whose_answer_resumes(corpus, llm):
    llm.script({"text": "Lisbon: warm and bright."})
    asked: list[dict] = []

    async def event_call(request: dict):
        asked.append(request)
        return "Lisbon"

    text = await ask(pipe_for(corpus), "ask_city", [{"role": "user", "content": "weather?"}], str(uuid.uuid4()),
                     event_call=event_call)
    assert [(r["type"], r["data"]["message"]) for r in asked] == [("input", "Which city?")]
    assert text.strip() == "Lisbon: warm and bright."
    assert llm.requests()[-1]["body"]["messages"][-1]["content"] == "The city is Lisbon."
