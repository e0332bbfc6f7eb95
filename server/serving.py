"""`loom serve` under uvicorn: one process, or N workers sharing the port (LOOM_WORKERS).

Workers are separate processes that build the app themselves, so uvicorn gets an import string and a factory
(`worker_app`). Everything they need comes through the environment they inherit: the settings, the log level,
and the demo model's URL (the model runs once, in the parent, started before the workers).
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI
from loom.server.settings import Settings

LOG_LEVEL_ENV = "LOOM_LOG_LEVEL"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per model request drowns the one line per run
        logging.getLogger(noisy).setLevel(logging.WARNING)


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn calls this factory in each)."""
    from loom.server.app import create_app

    configure_logging(os.environ.get(LOG_LEVEL_ENV, "info"))
    return create_app()


def run_server(settings: Settings, *, host: str, port: int, workers: int, log_level: str) -> None:
    import uvicorn

    os.environ[LOG_LEVEL_ENV] = log_level
    # Runs in flight get the drain's grace (server/shutdown.py); this bounds what is left after it (and Ctrl-C).
    uvicorn.run("loom.server.serving:worker_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5)
