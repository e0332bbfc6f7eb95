"""Mixture-of-Agents: layers of proposers answer in parallel, then an aggregator streams one synthesized answer.

Wang et al., "Mixture-of-Agents Enhances Large Language Model Capabilities" (arXiv:2406.04692). Every proposer of
a layer runs concurrently (a LangGraph `Send` each); layer n+1 and the aggregator see the previous layer's answers
through the aggregate-and-synthesize system prompt. Only the aggregator's answer is an assistant message: proposer
calls are tagged `nostream`, their results live in `proposals` (reset every turn) and reach the client as CUSTOM
events, so a client may show them while none of them enters the chat history.

CUSTOM events (keys without a value are left out, never null):
  loom.moa.proposer  {layer, index, model, temperature?, status: "started"}, then either
                     {..., status: "finished", answer, tokens?, latency_ms, attempts} or
                     {..., status: "failed", code, reason, latency_ms, attempts}. `index` is the position in the
                     `proposers` setting; code is DEADLINE, EMPTY_ANSWER, or the LLM_* code of the last error.
  loom.moa.layer     {layer, proposers, succeeded, failed} when a layer is done.
  loom.moa.fallback  {layer, mode, succeeded, required, reason, from_layer?} when a layer falls short:
                     mode "partial" (the aggregator uses the few answers there are), "earlier_layer" (it uses
                     `from_layer`'s answers), "direct" (no answers at all: the aggregator answers by itself).
Steps: "layer 1", "layer 2", ... span each layer (besides the node steps begin_turn, propose, end_layer, aggregate).
"""

from __future__ import annotations

import asyncio
import operator
import random
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired

import openai
from langchain_core.messages import AnyMessage, SystemMessage
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Overwrite, Send
from pydantic import Field
from tenacity import AsyncRetrying, retry_if_exception, stop_before_delay, wait_random_exponential
from typing_extensions import TypedDict  # not typing's: pydantic (Studio's schemas) needs this before 3.12

from loom.graphs.config import graph_settings
from loom.graphs.context import BaseContext, client_context_prompt
from loom.graphs.errors import classify
from loom.graphs.llm import chat_model
from loom.graphs.telemetry import record_moa

PROPOSER_EVENT, LAYER_EVENT, FALLBACK_EVENT = "loom.moa.proposer", "loom.moa.layer", "loom.moa.fallback"

# Our wording of the paper's aggregate-and-synthesize prompt (Table 1); the numbered answers follow it.
AGGREGATOR_PROMPT = (
    "You have been given answers from several AI models to the user's latest message. Synthesize them into a "
    "single, high-quality reply. Evaluate them critically: some of their content may be biased or wrong, and they "
    "may contradict each other. Do not simply copy them; write a refined, accurate and comprehensive answer that "
    "is well structured and coherent, addressed to the user directly.\n\nAnswers from the models:"
)

# ------------------------------------------------------------------------------------------------- context
# Defaults, from the MoA paper (Wang et al. 2024, arXiv:2406.04692) and its follow-ups:
# - three samples of one model at T 0.7 (Self-MoA, arXiv:2502.00674: samples of the single best model beat a
#   mix of weaker ones; the paper samples at T 0.7; Table 3 shows n=6 adds little over n=3 for one model at
#   twice the cost). Unset models are LOOM_LLM_MODEL, so the graph runs out of the box (demo model included);
# - one proposer layer (MoA-Lite: the paper's "2 layers" counts the aggregator; the first aggregation gives the
#   largest gain, and every extra layer adds its slowest proposer to the time to first token);
# - 512 tokens per proposal (togethercomputer/MoA's reference code; the aggregator reads all of them);
# - answers from at least one proposer, else the aggregator answers by itself (the eval code drops failures).
# - 30 s per proposer (the paper sets no deadline): room for 512 tokens at ~20 tokens/s from a slow or busy
#   endpoint, and the most a hung model can add to the time to first token per layer.


@dataclass
class Proposer:
    model: str | None = field(default=None, metadata={"description": "Model; default: LOOM_LLM_MODEL."})
    temperature: float | None = field(
        default=0.7, metadata={"description": "Sampling temperature (the paper: 0.7; null: the server's default)."})


@dataclass(kw_only=True)
class Context(BaseContext):
    proposers: list[Proposer] = field(
        default_factory=lambda: [Proposer(), Proposer(), Proposer()],
        metadata={"description": "Proposer models ({model, temperature}); one model repeated is Self-MoA. "
                                 "Default: LOOM_LLM_MODEL three times at temperature 0.7."})
    aggregator_model: str | None = field(
        default=None, metadata={"description": "Model that writes the answer; default: LOOM_LLM_MODEL. Good "
                                              "proposers are not always good aggregators: use your strongest."})
    layers: Annotated[int, Field(ge=0, le=10)] = field(
        default=1, metadata={"description": "Proposer layers before the aggregator (MoA-Lite: 1)."})
    agents_per_layer: Annotated[int, Field(ge=1)] | None = field(
        default=None, metadata={"description": "Proposers per layer, sampled at random; default: all of them."})
    sample_seed: int | None = field(
        default=None, metadata={"description": "Seed for that sampling (same seed, same proposers per layer)."})
    proposer_deadline: Annotated[float, Field(gt=0, le=3600)] = field(
        default=30.0, metadata={"description": "Seconds a proposer may take, retries included; then it is "
                                              "dropped and the layer goes on without it."})
    proposer_max_tokens: Annotated[int, Field(ge=1)] = field(
        default=512, metadata={"description": "Maximum tokens per proposal."})
    min_proposers: Annotated[int, Field(ge=0)] = field(
        default=1, metadata={"description": "Answers a layer needs to go on to the next layer; with fewer the "
                                           "aggregator answers from what exists."})
    aggregator_prompt: str = field(
        default=AGGREGATOR_PROMPT, metadata={"description": "System prompt of the aggregator and of proposers "
                                                            "after the first layer; the numbered answers follow."})

    def __post_init__(self) -> None:
        # LangGraph (Studio) builds the context as Context(**dict), which leaves the entries as dicts.
        self.proposers = [p if isinstance(p, Proposer) else Proposer(**p) for p in self.proposers]


class Proposal(TypedDict):
    layer: int
    index: int
    model: str
    status: Literal["finished", "failed"]
    latency_ms: int
    attempts: int
    temperature: NotRequired[float]
    answer: NotRequired[str]
    tokens: NotRequired[int]
    code: NotRequired[str]
    reason: NotRequired[str]


class State(MessagesState):
    layer: int  # the proposer layer in progress; 0 when the aggregator is next
    proposals: Annotated[list[Proposal], operator.add]  # this turn's proposer results (reset when a turn begins)


# ---------------------------------------------------------------------------------------------- helpers


def _answers(proposals: list[Proposal], layer: int) -> list[str]:
    """A layer's answers in proposer order (not completion order, so prompts are reproducible)."""
    done = [p for p in proposals if p["layer"] == layer and p["status"] == "finished"]
    return [p["answer"] for p in sorted(done, key=lambda p: p["index"])]


def _latest_answers(proposals: list[Proposal]) -> tuple[int, list[str]]:
    """(layer, answers) of the last layer that produced any; (0, []) when none did."""
    for layer in sorted({p["layer"] for p in proposals}, reverse=True):
        if answers := _answers(proposals, layer):
            return layer, answers
    return 0, []


def _prompt(history: list[AnyMessage], ctx: Context, answers: list[str]) -> list[AnyMessage]:
    """The conversation, with the answers to synthesize in the system message.

    As in the paper the prompt is appended, after a blank line, to a system message the conversation already
    starts with; the user's turns stay as they are.
    """
    parts = []
    if history and isinstance(history[0], SystemMessage):
        parts.append(history[0].text)
        history = history[1:]
    parts.append(client_context_prompt(ctx.client_context).strip())
    if answers:
        parts.append(ctx.aggregator_prompt + "\n\n" + "\n\n".join(f"{i}. {a}" for i, a in enumerate(answers, 1)))
    system = "\n\n".join(p for p in parts if p)
    return [SystemMessage(system), *history] if system else list(history)


def _selected(ctx: Context, layer: int) -> list[int]:
    """Indices of the proposers that run in `layer`: all, or a random sample of `agents_per_layer` (at least 1)."""
    indices = list(range(len(ctx.proposers)))
    if ctx.agents_per_layer is None or ctx.agents_per_layer >= len(indices):
        return indices
    rng = random.Random(f"{ctx.sample_seed}:{layer}") if ctx.sample_seed is not None else random.Random()
    return sorted(rng.sample(indices, max(1, ctx.agents_per_layer)))


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: rate limits, server errors, lost connections and stalls (not 4xx refusals)."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)  # timeouts included


# ------------------------------------------------------------------------------------------------- nodes


async def begin_turn(state: State, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context or Context()
    if not ctx.proposers or ctx.layers < 1:
        runtime.stream_writer({"name": FALLBACK_EVENT, "value": {
            "layer": 0, "mode": "direct", "succeeded": 0, "required": ctx.min_proposers,
            "reason": "No proposers are configured: the aggregator answers by itself."}})
        return {"layer": 0, "proposals": Overwrite([])}
    runtime.stream_writer({"step": "layer 1", "status": "started"})
    return {"layer": 1, "proposals": Overwrite([])}


async def propose(task: dict[str, Any], runtime: Runtime[Context]) -> dict:
    """One proposer (the input is its Send payload). Never raises: a raising task would fail the whole layer."""
    ctx = runtime.context or Context()
    emit = runtime.stream_writer
    who: dict[str, Any] = {"layer": task["layer"], "index": task["index"], "model": task["model"]}
    if task["temperature"] is not None:
        who["temperature"] = task["temperature"]
    emit({"name": PROPOSER_EVENT, "value": {**who, "status": "started"}})
    # The openai client's own retries cannot see the deadline, so this model makes one attempt per call and
    # tenacity retries here (DESIGN: tenacity for retries outside the openai client): full-jitter exponential
    # backoff, never starting a wait that would end past the deadline. asyncio.timeout cuts off the attempt in
    # flight at the deadline; cancelling it closes its HTTP request, so a hung model costs nothing afterwards.
    model = chat_model(task["model"], task["temperature"], ctx.proposer_max_tokens, max_retries=0).with_config(
        tags=[TAG_NOSTREAM], metadata={"moa_role": "proposer", "moa_layer": task["layer"], "moa_index": task["index"]})
    retrying = AsyncRetrying(retry=retry_if_exception(_transient), reraise=True,
                             wait=wait_random_exponential(multiplier=0.2, max=2.0),
                             stop=stop_before_delay(ctx.proposer_deadline))
    started, attempts = time.perf_counter(), 0
    deadline = asyncio.timeout(ctx.proposer_deadline)
    try:
        async with deadline:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    response = await model.ainvoke(task["prompt"])
        answer = response.text.strip()
        record = {**who, "status": "finished", "answer": answer} if answer else {
            **who, "status": "failed", "code": "EMPTY_ANSWER", "reason": "The model returned an empty answer."}
        if tokens := (response.usage_metadata or {}).get("output_tokens"):
            record["tokens"] = tokens
        if response.usage_metadata:  # hidden from the message stream, but counted in RUN_FINISHED.usage
            emit({"usage": response.usage_metadata, "model": response.response_metadata.get("model_name")})
    except Exception as exc:
        code, reason = ("DEADLINE", f"No answer within the {ctx.proposer_deadline:g} s deadline.") \
            if deadline.expired() else classify(exc)
        record = {**who, "status": "failed", "code": code, "reason": reason}
    record_moa(failure=record.get("code"), retries=attempts - 1)
    record |= {"latency_ms": round((time.perf_counter() - started) * 1000), "attempts": attempts}
    emit({"name": PROPOSER_EVENT, "value": record})
    return {"proposals": [record]}


async def end_layer(state: State, runtime: Runtime[Context]) -> dict:
    """Close the layer; go on to the next one, or to the aggregator (saying so when the layer fell short)."""
    ctx = runtime.context or Context()
    emit = runtime.stream_writer
    layer = state["layer"]
    records = [p for p in state["proposals"] if p["layer"] == layer]
    succeeded = len(_answers(records, layer))
    emit({"name": LAYER_EVENT, "value": {"layer": layer, "proposers": len(records), "succeeded": succeeded,
                                         "failed": len(records) - succeeded}})
    emit({"step": f"layer {layer}", "status": "finished"})
    required = max(1, min(ctx.min_proposers, len(records)))  # a sampled layer cannot need more than it ran
    if succeeded >= required:
        if layer < ctx.layers:
            emit({"step": f"layer {layer + 1}", "status": "started"})
            return {"layer": layer + 1}
        return {"layer": 0}
    fallback: dict[str, Any] = {"layer": layer, "succeeded": succeeded, "required": required}
    earlier, _ = _latest_answers(state["proposals"])
    if succeeded:
        fallback |= {"mode": "partial", "reason": f"Only {succeeded} of {required} required proposers answered; "
                                                  "the aggregator works from their answers."}
    elif earlier:
        fallback |= {"mode": "earlier_layer", "from_layer": earlier,
                     "reason": f"No proposer of layer {layer} answered; the aggregator works from layer {earlier}."}
    else:
        fallback |= {"mode": "direct", "reason": "No proposer answered; the aggregator answers by itself."}
    emit({"name": FALLBACK_EVENT, "value": fallback})
    record_moa(fallback=fallback["mode"])
    return {"layer": 0}


async def aggregate(state: State, runtime: Runtime[Context]) -> dict:
    """The one streamed answer. Its failures end the run like the agent's (RUN_ERROR with a code)."""
    ctx = runtime.context or Context()
    _, answers = _latest_answers(state["proposals"])
    model = chat_model(ctx.aggregator_model).with_config(metadata={"moa_role": "aggregator"})
    response = await model.ainvoke(_prompt(state["messages"], ctx, answers))
    return {"messages": [response]}


# ------------------------------------------------------------------------------------------------- edges


async def fan_out(state: State, runtime: Runtime[Context]) -> list[Send] | str:
    """One Send per proposer of the layer, all with the same prompt; the aggregator once the layers are done."""
    layer = state["layer"]
    if not layer:
        return "aggregate"
    ctx = runtime.context or Context()
    prompt = _prompt(state["messages"], ctx, _answers(state["proposals"], layer - 1))
    default_model = graph_settings().llm_model
    return [Send("propose", {"layer": layer, "index": i, "model": ctx.proposers[i].model or default_model,
                             "temperature": ctx.proposers[i].temperature, "prompt": prompt})
            for i in _selected(ctx, layer)]


# Input is the conversation only: the other keys are the graph's own, not state shared with AG-UI clients.
builder = StateGraph(State, context_schema=Context, input_schema=MessagesState)
builder.add_node(begin_turn)
builder.add_node(propose)
builder.add_node(end_layer)
builder.add_node(aggregate)
builder.add_edge(START, "begin_turn")
builder.add_conditional_edges("begin_turn", fan_out, ["propose", "aggregate"])
builder.add_edge("propose", "end_layer")
builder.add_conditional_edges("end_layer", fan_out, ["propose", "aggregate"])
builder.add_edge("aggregate", END)

graph = builder.compile(name="moa")
