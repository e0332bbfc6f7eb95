"""`loom serve`, `loom chat` and `loom pipe`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid

import typer
from loom.server.settings import get_settings, reload_settings
from rich.console import Console

app = typer.Typer(help="loom: LangGraph agents as AG-UI endpoints and OpenWebUI models.", no_args_is_help=True)
console = Console()


def _use_demo_model_if_unconfigured() -> object | None:
    """Start the embedded demo model when no LLM endpoint is configured; returns it (to stop) or None."""
    settings = get_settings()
    if not settings.uses_demo_model:
        return None
    from loom.server.local_llm import LocalModelUnavailable, start_local_llm

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
    log_level: str = typer.Option("info", help="Log level."),
) -> None:
    """Run the AG-UI server. Without LOOM_LLM_BASE_URL it starts a tiny offline demo model first."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per model request drowns the one line per run
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _check_settings()
    local = _use_demo_model_if_unconfigured()
    # The address given here is the one loom serves on (and names in the files it hands out).
    settings = get_settings().model_copy(update={"host": host or get_settings().host,
                                                 "port": port or get_settings().port})
    from loom.server.app import create_app

    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level=log_level, access_log=False)
    finally:
        if local is not None:
            local.stop()


@app.command()
def chat(
    graph: str = typer.Argument(..., help="Graph name from langgraph.json, e.g. agent."),
    message: str = typer.Argument(..., help="The user message."),
    thread: str = typer.Option(None, help="Continue a thread (default: a new one)."),
    show_events: bool = typer.Option(False, "--events", help="Print every AG-UI event as JSON."),
) -> None:
    """Stream one run of a graph to the terminal, in-process, with the configured database."""
    logging.basicConfig(level="WARNING")
    local = _use_demo_model_if_unconfigured()
    try:
        asyncio.run(_chat(graph, message, thread or str(uuid.uuid4()), show_events))
    finally:
        if local is not None:
            local.stop()


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
        async for chunk in stream_run(prepared):
            for line in chunk.splitlines():
                if line.startswith("data: "):
                    _render(json.loads(line[6:]), show_events)
        await close_http_clients()
    console.print(f"\n[dim]thread {thread_id}[/dim]")


def _render(event: dict, show_events: bool) -> None:
    kind = event["type"]
    if show_events:
        console.print_json(json.dumps(event))
        return
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
    elif kind == "RUN_ERROR":
        console.print(f"\n[red]{event.get('code', 'ERROR')}: {event['message']}[/red]")
    elif kind == "RUN_FINISHED":
        outcome = event.get("outcome") or {}
        if outcome.get("type") == "interrupt":
            for item in outcome["interrupts"]:
                console.print(f"\n[yellow]waiting for approval: {item.get('message', item['id'])}[/yellow]")
        elif outcome.get("pendingToolCallIds"):
            console.print(f"\n[yellow]client tools pending: {', '.join(outcome['pendingToolCallIds'])}[/yellow]")
