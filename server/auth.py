"""API keys: each bound to one user, or a trusted proxy that names the end user per request."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from fastapi import HTTPException, Request

from loom.server.settings import Settings


@dataclass(frozen=True)
class Caller:
    kind: str  # "user" (key bound to user_id), "proxy" (names the user per request), "open" (no keys, loopback)
    user_id: str | None = None


def _error(status: int, code: str, message: str) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return HTTPException(status, {"code": code, "message": message}, headers=headers)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def authenticate(request: Request, settings: Settings) -> Caller:
    if not settings.api_keys:
        if not _is_loopback(request.client.host if request.client else None):
            raise _error(403, "loopback_only", "This loom server has no API keys (LOOM_API_KEYS) and only accepts "
                                               "connections from this machine.")
        return Caller("open")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _error(401, "missing_api_key", "Send an API key as 'Authorization: Bearer <key>'.")
    match = None
    for key in settings.api_keys:  # no early exit: every key is compared, in constant time
        if hmac.compare_digest(key.key.encode(), token.encode()):
            match = key
    if match is None:
        raise _error(401, "invalid_api_key", "The API key is not valid for this loom server.")
    return Caller("proxy") if match.proxy else Caller("user", match.user_id)


def resolve_user(caller: Caller, named: str | None) -> str:
    """The user a run acts for: the key's own user, or the one a trusted proxy names."""
    if caller.kind == "user":
        if named is not None and named != caller.user_id:
            raise _error(403, "user_mismatch", "This API key is bound to one user and cannot act for another "
                                               "(forwardedProps.user.id).")
        return caller.user_id
    if named is None:
        if caller.kind == "proxy":
            raise _error(422, "missing_user", "forwardedProps.user.id is required with a proxy API key.")
        return "local"
    return named
