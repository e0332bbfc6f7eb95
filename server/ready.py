"""GET /ready: should this process get traffic? /health stays the cheap liveness check.

200 {"status": "ready", "graphs"} when the graphs are compiled, the database answers and no shutdown is under
way; otherwise 503 {"status": "unavailable", "failing": "graphs" | "database" | "shutdown", "message"}.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])

DATABASE_TIMEOUT_SECONDS = 3


def _unready(failing: str, message: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "failing": failing, "message": message}, status_code=503)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    if not getattr(state, "graphs", None):
        return _unready("graphs", "The graphs are not compiled yet.")
    if state.drain.draining:
        return _unready("shutdown", "The server is shutting down.")
    try:
        await asyncio.wait_for(state.threads.ping(), DATABASE_TIMEOUT_SECONDS)
    except Exception as exc:
        return _unready("database", f"The database is unreachable: {type(exc).__name__}: {exc}"[:500])
    return JSONResponse({"status": "ready", "graphs": sorted(state.graphs)})
