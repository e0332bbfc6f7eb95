"""`loom serve`, `loom chat` and `loom pipe`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid

import typer
from rich.console import Console
from rich.markup import escape

from loom.server.settings import get_settings, reload_settings

app = typer.Typer(help="loom: LangGraph agents as AG-UI endpoints and OpenWebUI models.", no_args_is_help=True)
console = Console()


def _use_demo_model_if_unconfigured() -> object | None:
    """Start the embedded demo model when no LLM endpoint is configured; returns it (to stop) or None."""
    settings = get_settings()
    if not settings.uses_demo_model:
        return None
    from loom.graphs.local_llm import LocalModelUnavailable, start_local_llm

    try:
        local = start_local_llm(port=settings.local_llm_port, threads=settings.local_llm_threads)
    except LocalModelUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    os.environ.update(LOOM_LLM_BASE_URL=local.base_url, LOOM_LLM_MODEL=local.model, LOOM_DEMO_MODEL="true")
    reload_settings()
    return local


def _check_settings() -> None:
    """Refuse to start on a setting that would fail every run, with the setting's own message."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "LOOM_" + "_".join(str(p) for p in error["loc"]).upper()
            console.print(f"[red]{name}: {error['msg'].removeprefix('Value error, ')}[/red]")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: str = typer.Option(None, help="Interface to bind (LOOM_HOST)."),
    port: int = typer.Option(None, help="Port (LOOM_PORT)."),
    workers: int = typer.Option(None, min=1, help="Processes sharing the port (LOOM_WORKERS, default 1)."),
    log_level: str = typer.Option("info", help="Log level."),
    config: str = typer.Option(None, "--config", help="The langgraph.json to serve (LOOM_GRAPHS; default "
                                                      "./langgraph.json, else loom's own)."),
) -> None:
    """Run the AG-UI server. Without LOOM_LLM_BASE_URL it starts a tiny offline demo model first."""
    from loom.server.serving import configure_logging, run_server

    configure_logging(log_level)
    _check_settings()
    _check_graphs(config)
    # The address given here is the one loom serves on (and names in the files it hands out); workers read it
    # from the environment like every other setting.
    os.environ.update({k: str(v) for k, v in (("LOOM_HOST", host), ("LOOM_PORT", port)) if v})
    reload_settings()
    local = _use_demo_model_if_unconfigured()  # once, before any worker: they get its URL from the environment
    settings = get_settings()
    try:
        run_server(settings, host=settings.host, port=settings.port, workers=workers or settings.workers,
                   log_level=log_level)
    finally:
        if local is not None:
            local.stop()


def _check_graphs(config: str | None) -> None:
    """Load the graphs before serving: a graph that cannot load is one clear line, not a traceback."""
    from loom.server.registry import GraphLoadError, load_builders

    if config is not None:
        os.environ["LOOM_GRAPHS"] = os.path.abspath(config)  # worker processes read it too
    try:
        load_builders()
    except GraphLoadError as exc:
        Console(stderr=True).print(f"loom cannot start: {exc}", style="red", markup=False, highlight=False,
                                   soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def chat(
    graph: str = typer.Argument(..., help="Graph name from langgraph.json, e.g. agent."),
    message: str = typer.Argument(..., help="The user message."),
    thread: str = typer.Option(None, help="Continue a thread (default: a new one)."),
    show_events: bool = typer.Option(False, "--events", help="Print every AG-UI event as JSON."),
    url: str = typer.Option(None, help="A loom server to talk to (default: the local one at LOOM_HOST:LOOM_PORT "
                                       "when it answers, else --local)."),
    api_key: str = typer.Option(None, envvar="LOOM_CHAT_API_KEY", help="Key for a server with LOOM_API_KEYS."),
    local: bool = typer.Option(False, "--local", help="Run the graph in this process on the configured database "
                                                      "(starts the demo model when no LLM is configured)."),
) -> None:
    """Stream one run of a graph to the terminal: through a running loom server, or in-process with --local."""
    from loom.server.chat_client import ChatClientError, chat_over_http, local_server_url

    logging.basicConfig(level="WARNING")
    thread_id = thread or str(uuid.uuid4())
    if not local:
        server = url or local_server_url(get_settings())
        if server is None:
            Console(stderr=True).print("[dim]No loom server answers on this machine: running in-process "
                                       "(`loom serve` in another terminal makes this faster).[/dim]")
        else:
            try:
                asyncio.run(chat_over_http(server, api_key, graph, message, thread_id, _printer(show_events)))
            except ChatClientError as exc:
                console.print(f"[red]{exc}[/red]")
                raise typer.Exit(2) from None
            console.print(f"\n[dim]thread {thread_id}[/dim]")
            return
    local_llm = _use_demo_model_if_unconfigured()
    try:
        asyncio.run(_chat(graph, message, thread_id, show_events))
    finally:
        if local_llm is not None:
            local_llm.stop()


@app.command()
def pipe(
    url: str = typer.Option(None, help="loom's URL as OpenWebUI reaches it (default: http://LOOM_HOST:LOOM_PORT)."),
    output: str = typer.Option(None, "--output", "-o", help="Write the file here (default: standard output)."),
) -> None:
    """Render the OpenWebUI pipe: one file to paste into OpenWebUI's Admin → Functions."""
    from pathlib import Path

    from loom.adapters.openwebui.bundle import PipeRenderError, render_pipe

    settings = get_settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # a bind-all address
    try:
        text = render_pipe(url or f"http://{host}:{settings.port}")
    except PipeRenderError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if output is None:
        typer.echo(text, nl=False)
    else:
        Path(output).write_text(text)
        Console(stderr=True).print(f"Wrote {output}: paste it into OpenWebUI (Admin → Functions), then set its "
                                   "API key valve to a proxy key (LOOM_API_KEYS='<key>=proxy').")


async def _chat(graph: str, message: str, thread_id: str, show_events: bool) -> None:
    from ag_ui.core import RunAgentInput

    from loom.graphs.llm import close_http_clients
    from loom.server.persistence import open_persistence
    from loom.server.registry import compile_all
    from loom.server.runs import prepare_run, stream_run

    settings = get_settings()
    async with open_persistence(settings.database_url) as (checkpointer, store):
        graphs = compile_all(checkpointer, store)
        if graph not in graphs:
            console.print(f"[red]No graph named {graph!r}; available: {', '.join(graphs)}[/red]")
            raise typer.Exit(2)
        entry = graphs[graph]
        history = (await entry.graph.aget_state({"configurable": {"thread_id": thread_id}})).values
        from loom.adapters.agui.messages import to_agui

        new_turn = {"id": str(uuid.uuid4()), "role": "user", "content": message}
        messages = [*to_agui(history.get("messages", [])), new_turn]
        run = RunAgentInput.model_validate({"threadId": thread_id, "runId": str(uuid.uuid4()), "messages": messages})
        prepared = await prepare_run(entry, run, "local")
        render = _printer(show_events)
        async for chunk in stream_run(prepared):
            for line in chunk.splitlines():
                if line.startswith("data: "):
                    render(json.loads(line[6:]))
        await close_http_clients()
    console.print(f"\n[dim]thread {thread_id}[/dim]")


def _printer(show_events: bool):
    return (lambda event: console.print_json(json.dumps(event))) if show_events else _render


def _render(event: dict) -> None:
    kind = event["type"]
    if kind == "TEXT_MESSAGE_CONTENT":
        console.print(event["delta"], end="", markup=False, highlight=False)
    elif kind == "REASONING_MESSAGE_CONTENT":
        console.print(event["delta"], end="", style="dim italic", markup=False, highlight=False)
    elif kind == "TOOL_CALL_START":
        console.print(f"\n[cyan]⚙ {event['toolCallName']}[/cyan] ", end="")
    elif kind == "TOOL_CALL_ARGS":
        console.print(event["delta"], end="", style="cyan", markup=False, highlight=False)
    elif kind == "TOOL_CALL_RESULT":
        console.print(f"\n[green]→ {event['content']}[/green]")
    elif kind == "TEXT_MESSAGE_END":
        console.print()
    elif kind == "CUSTOM" and event.get("name") in ("loom.memory.recalled", "loom.memory.saved"):
        memories = (event.get("value") or {}).get("memories") or []
        verb = "recalled" if event["name"].endswith("recalled") else "saved"
        for memory in memories:
            console.print(f"[dim]🧠 {verb}: {escape(str(memory.get('content', '')))}[/dim]", highlight=False)
    elif kind == "RUN_ERROR":
        console.print(f"\n[red]{event.get('code', 'ERROR')}: {event['message']}[/red]")
    elif kind == "RUN_FINISHED":
        outcome = event.get("outcome") or {}
        if outcome.get("type") == "interrupt":
            for item in outcome["interrupts"]:
                console.print(f"\n[yellow]waiting for approval: {item.get('message', item['id'])}[/yellow]")
        elif outcome.get("pendingToolCallIds"):
            console.print(f"\n[yellow]client tools pending: {', '.join(outcome['pendingToolCallIds'])}[/yellow]")
