"""`loom serve` under uvicorn: one process, or N workers sharing the port (LOOM_WORKERS).

Workers are separate processes that build the app themselves, so uvicorn gets an import string and a factory
(`worker_app`). Everything they need comes through the environment they inherit: the settings, the log level,
and the demo model's URL (the model runs once, in the parent, started before the workers).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from fastapi import FastAPI

from loom.server.settings import Settings

LOG_LEVEL_ENV = "LOOM_LOG_LEVEL"
LOG_FORMAT_ENV = "LOOM_LOG_FORMAT"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def json_logs() -> bool:
    return os.environ.get(LOG_FORMAT_ENV, "text").strip().lower() == "json"


def configure_logging(level: str) -> None:
    if json_logs():  # every record, uvicorn's too (run_server hands uvicorn no logging config of its own)
        from loom.server.observe import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level.upper(),
                            format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per model request drowns the one line per run
        logging.getLogger(noisy).setLevel(logging.WARNING)


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn calls this factory in each)."""
    from loom.server.app import create_app

    configure_logging(os.environ.get(LOG_LEVEL_ENV, "info"))
    return create_app()


def run_server(settings: Settings, *, host: str, port: int, workers: int, log_level: str) -> None:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    os.environ[LOG_LEVEL_ENV] = log_level
    # Workers are separate processes: prometheus-client's multiprocess mode has each write its metrics to files
    # in one directory, which GET /metrics (in whichever worker answers) sums up. Set before the workers import
    # prometheus-client; an operator's own PROMETHEUS_MULTIPROC_DIR is used as it is.
    own_dir = None
    if workers > 1 and settings.metrics_enabled and not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="loom-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    try:
        # Runs in flight get the drain's grace (server/shutdown.py); this bounds what is left after it (and Ctrl-C).
        uvicorn.run("loom.server.serving:worker_app", factory=True, host=host, port=port, workers=workers,
                    http="loom.server.http_protocol:BoundedHeadProtocol",  # 431 while an endless head arrives
                    log_level=log_level, access_log=False, log_config=None if json_logs() else LOGGING_CONFIG,
                    timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5)
    finally:
        if own_dir is not None:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(own_dir, ignore_errors=True)
