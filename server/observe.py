"""What operators read: the one log line per run (plain or JSON), the run metrics, and `GET /metrics`.

`GET /metrics` needs a key when keys are configured: LOOM_METRICS_KEY if set (a scraper then holds no run
key), otherwise any proxy key of LOOM_API_KEYS (a key bound to one user never reads server-wide numbers).
Without LOOM_API_KEYS and LOOM_METRICS_KEY it answers loopback callers only, like every other route.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loom.graphs import telemetry
from loom.server.auth import _error, authenticate
from loom.server.settings import Settings

log = logging.getLogger("loom.run")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REJECTED_STATUSES = frozenset({401, 403, 404, 409, 413, 422, 431})

router = APIRouter()


def run_finished(graph: str, thread_id: str, run_id: str, user_id: str, outcome: str, seconds: float,
                 ttft: float | None, stats: telemetry.RunStats | None, user_mode: str) -> None:
    """The run's metrics and its one log line."""
    status, _, code = outcome.partition(":")
    if telemetry.enabled:
        telemetry.RUNS.labels(graph, status, code).inc()
        telemetry.RUN_SECONDS.labels(graph).observe(seconds)
        if ttft is not None:
            telemetry.TTFT_SECONDS.labels(graph).observe(ttft)
        telemetry.RUNS_IN_FLIGHT.labels(graph).dec()
    if not log.isEnabledFor(logging.INFO):
        return
    user = logged_user(user_id, user_mode)
    fields = {"graph": graph, "thread": thread_id, "run": run_id, "user": user,
              "duration_ms": round(seconds * 1000, 1), "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
              "model_calls": stats.model_calls if stats else 0, "tool_calls": stats.tool_calls if stats else 0,
              "tokens_in": stats.tokens_in if stats else 0, "tokens_out": stats.tokens_out if stats else 0,
              "outcome": status, "error_code": code or None}
    log.info("run graph=%s thread=%s run=%s user=%s duration_ms=%.0f ttft_ms=%s tokens_in=%d tokens_out=%d "
             "model_calls=%d tool_calls=%d outcome=%s", graph, thread_id, run_id, user, seconds * 1000,
             "-" if ttft is None else f"{ttft * 1000:.0f}", fields["tokens_in"], fields["tokens_out"],
             fields["model_calls"], fields["tool_calls"], outcome, extra={"run": fields})


def run_started(graph: str) -> None:
    if telemetry.enabled:
        telemetry.RUNS_IN_FLIGHT.labels(graph).inc()


def logged_user(user_id: str, mode: str) -> str | None:
    """The user as LOOM_OPENPIPE_USER_ID says to show it: plain, hashed (16 hex of SHA-256) or off."""
    if mode == "off":
        return None
    return hashlib.sha256(user_id.encode()).hexdigest()[:16] if mode == "hashed" else user_id


def refused(reason: str) -> None:
    if telemetry.enabled:
        telemetry.RUN_REFUSALS.labels(reason).inc()


# ---------------------------------------------------------------------------------------------- JSON logs

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, pid, message, and the record's extra fields."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "pid": record.process,
                 "message": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)



# ---------------------------------------------------------------------------------------------- scraping

def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def forget_dead_workers(directory: Path) -> None:
    """Drop the live gauges of workers that died (uvicorn restarts them under a new pid)."""
    from prometheus_client import multiprocess

    pids = {path.stem.rsplit("_", 1)[-1] for path in directory.glob("gauge_live*_*.db")}
    for pid in pids:
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exposition() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    forget_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(directory))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def authorize_scrape(request: Request, settings: Settings) -> None:
    if not settings.metrics_key:
        caller = authenticate(request, settings)
        if settings.api_keys and caller.kind != "proxy":
            raise _error(403, "metrics_forbidden", "Reading /metrics needs LOOM_METRICS_KEY or a proxy API key.")
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _error(401, "missing_api_key", "Send the metrics key as 'Authorization: Bearer <key>'.")
    if not hmac.compare_digest(settings.metrics_key.encode(), token.encode()):
        raise _error(401, "invalid_api_key", "The key is not LOOM_METRICS_KEY.")


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    if not settings.metrics_enabled:
        raise HTTPException(404, {"code": "metrics_disabled", "message": "Metrics are off (LOOM_METRICS_ENABLED)."})
    authorize_scrape(request, settings)
    body, content_type = await asyncio.to_thread(_exposition)  # multiprocess mode reads every worker's files
    return Response(body, media_type=content_type)


class CountRejections:
    """Counts the refusals (401/403/404/409/413/422/431) of every route, the RequestGuard's early ones too."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not telemetry.enabled:
            return await self.app(scope, receive, send)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in REJECTED_STATUSES:
                telemetry.REJECTIONS.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)

