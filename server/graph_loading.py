"""Import one graph the way LangGraph's own server does: `./path/file.py:attr` or `package.module:attr`.

`attr` is a compiled graph, a StateGraph, or a factory (`Factory`) making either. As in LangGraph's server, a
factory is called once at start-up for the graph's shape (schemas, listing) and again for every run, with that
run's config and runtime, so it can pick a model per run or hold resources (MCP clients, connections) open for
exactly one run. loom compiles what it makes with loom's own checkpointer and store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import typing
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from langgraph.graph.state import StateGraph
from langgraph.pregel import Pregel
from langgraph_sdk.runtime import ServerRuntime, _ExecutionRuntime, _ReadRuntime

# What a factory taking a config receives at start-up: no run exists yet, so nothing is configured.
STARTUP_CONFIG: dict[str, Any] = {"configurable": {}, "metadata": {}, "tags": []}


def load_target(root: Path, where: str) -> tuple[ModuleType, StateGraph | Pregel, Factory | None]:
    """(module, exported graph, its factory if it is made by one) for one langgraph.json entry; raises whatever
    importing or the factory raises."""
    location, _, attr = where.rpartition(":") if ":" in where else (where, "", "graph")
    module = _import_location(root, location)
    if not hasattr(module, attr):
        raise AttributeError(f"{location} has no attribute {attr!r}")
    exported = getattr(module, attr)
    factory = None
    if callable(exported) and not isinstance(exported, (StateGraph, Pregel)):
        factory = Factory.of(exported)
        exported = factory.startup_graph()
    if not _is_graph(exported):
        raise TypeError(f"{where} is a {type(exported).__name__}, not a compiled graph, StateGraph or factory "
                        "returning one")
    return module, exported, factory


def _is_graph(value: Any) -> bool:
    return isinstance(value, (StateGraph, Pregel)) and isinstance(getattr(value, "builder", value), StateGraph)


@dataclass(frozen=True)
class Factory:
    """A graph factory, called as LangGraph's server calls it: by parameter, with nothing, the run's config
    (`config: RunnableConfig`), a `ServerRuntime` (annotated so), or both. It may return the graph, a coroutine
    of it, or a (sync or async) context manager yielding it, which stays open for the run."""

    fn: Callable[..., Any]
    config_param: str | None
    runtime_param: str | None

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> Factory:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty]
        try:
            hints = typing.get_type_hints(fn, localns={"ServerRuntime": ServerRuntime})
        except Exception:  # an annotation that does not resolve: no runtime parameter, as LangGraph's server
            hints = {}
        runtime = [p.name for p in params if _is_runtime(hints.get(p.name, p.annotation))]
        config = [p.name for p in params if p.name not in runtime]
        if len(params) > 2 or len(runtime) > 1 or len(config) > 1:
            raise TypeError(f"factory {fn.__name__} takes ({', '.join(p.name for p in params)}); LangGraph factories "
                            "take nothing, a RunnableConfig, a ServerRuntime, or one of each")
        return cls(fn, config[0] if config else None, runtime[0] if runtime else None)

    def _call(self, config: dict, runtime: Any) -> Any:
        kwargs = {}
        if self.config_param:
            kwargs[self.config_param] = config
        if self.runtime_param:
            kwargs[self.runtime_param] = runtime
        return self.fn(**kwargs)

    def startup_graph(self) -> StateGraph | Pregel:
        """The graph's shape, made once at start-up (LangGraph's `assistants.read`): no run, nothing configured."""
        runtime = _ReadRuntime(access_context="assistants.read", store=None)

        async def make() -> Any:
            async with _entered(self._call(dict(STARTUP_CONFIG), runtime)) as graph:
                return graph

        return _run_coroutine(make())

    @asynccontextmanager
    async def run_graph(self, config: dict, context: Any, store: Any) -> AsyncIterator[StateGraph | Pregel]:
        """The graph one run executes, made with the run's config and context; the factory's context manager, if
        it returns one, stays open until the run ends."""
        runtime = _ExecutionRuntime(access_context="threads.create_run", store=store, context=context)
        async with AsyncExitStack() as held:
            try:
                graph = await held.enter_async_context(_entered(self._call(config, runtime)))
            except Exception as exc:
                raise GraphFactoryError(f"The graph factory {self.fn.__name__} failed for this run: "
                                        f"{type(exc).__name__}: {exc}") from exc
            if not _is_graph(graph):
                raise GraphFactoryError(f"The graph factory {self.fn.__name__} made a {type(graph).__name__}, not "
                                        "a graph.")
            yield graph


class GraphFactoryError(Exception):
    """A factory could not make a run's graph: the run ends with its own code, not as a model failure."""

    run_error_code = "GRAPH_FACTORY_FAILED"


def _is_runtime(annotation: Any) -> bool:
    if annotation is ServerRuntime:
        return True
    if isinstance(annotation, type):
        return issubclass(annotation, (_ExecutionRuntime, _ReadRuntime))
    origin = typing.get_origin(annotation)
    if origin is not None:
        args = typing.get_args(annotation)
        return origin is ServerRuntime or bool(args) and _is_runtime(args[0])  # ServerRuntime[Ctx], Annotated[...]
    return False


@asynccontextmanager
async def _entered(value: Any) -> AsyncIterator[Any]:
    """What a factory returned, entered: an async or sync context manager, a coroutine, or the graph itself."""
    if hasattr(value, "__aenter__") and hasattr(value, "__aexit__"):
        async with value as entered:
            yield entered
    elif hasattr(value, "__enter__") and hasattr(value, "__exit__"):
        with value as entered:
            yield entered
    elif inspect.isawaitable(value):
        yield await value
    else:
        yield value


def _run_coroutine(awaitable: Any) -> Any:
    async def wait():
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    # Called from the server's start-up, inside its loop: a worker thread with a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def _import_location(root: Path, location: str) -> ModuleType:
    if location.endswith(".py") or "/" in location or "\\" in location:
        return import_file((root / location).resolve())
    return importlib.import_module(location)  # `package.module`, importable from `dependencies` or installed


def import_file(file: Path) -> ModuleType:
    """Import a graph's file; loom's own modules by their package name, so each is loaded once."""
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {file}")
    for package in ("loom.graphs", "loom.adapters"):
        folder = Path(importlib.import_module(package).__path__[0]).resolve()
        if file.is_relative_to(folder):
            return importlib.import_module(".".join([package, *file.relative_to(folder).with_suffix("").parts]))
    name = "loom_user_graph_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"no Python module at {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def apply_env(root: Path, env: str | Mapping[str, Any] | None) -> None:
    """langgraph.json's `env`: a .env file (relative to it) or a mapping. Variables already set win."""
    if not env:
        return
    if isinstance(env, str):
        from dotenv import dotenv_values

        file = (root / env).resolve()
        if not file.is_file():
            raise FileNotFoundError(f"env file {file} (langgraph.json `env`) does not exist")
        values = {k: v for k, v in dotenv_values(file).items() if v is not None}
    elif isinstance(env, Mapping):
        values = {str(k): str(v) for k, v in env.items()}
    else:
        raise TypeError(f"`env` must be a file path or an object, not {type(env).__name__}")
    for key, value in values.items():
        os.environ.setdefault(key, value)


def add_dependencies(root: Path, dependencies: list[str]) -> None:
    """Local packages the graphs import go on sys.path, as `langgraph dev` installs them."""
    for dependency in dependencies:
        folder = str((root / dependency).resolve())
        if Path(folder).is_dir() and folder not in sys.path:
            sys.path.append(folder)
