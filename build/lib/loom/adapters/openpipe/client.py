"""OpenPipe's REST API over httpx (the `openpipe` SDK pins openai<=1.97.1 and its report call blocks).

Paths under the base URL (default https://api.openpipe.ai/api/v1), bearer auth:
POST /report, GET /datasets, POST /datasets, POST /datasets/{id}/entries.
"""

from __future__ import annotations

from typing import Any

import httpx


class OpenPipeError(Exception):
    """Any OpenPipe failure. `retryable`: worth another attempt later."""

    retryable = False

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class OpenPipeAuthError(OpenPipeError):
    """401/403: the API key is missing or wrong."""


class OpenPipeNotFound(OpenPipeError):
    """404: no such dataset (or path)."""


class OpenPipeRateLimited(OpenPipeError):
    retryable = True

    def __init__(self, message: str, status: int | None = 429, retry_after: float | None = None):
        super().__init__(message, status)
        self.retry_after = retry_after


class OpenPipeUnreachable(OpenPipeError):
    """Connection refused, DNS, timeout: OpenPipe could not be asked."""

    retryable = True


class OpenPipeServerError(OpenPipeError):
    retryable = True


class OpenPipeClient:
    def __init__(self, api_key: str | None, base_url: str = "https://api.openpipe.ai/api/v1",
                 timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, transport=transport,
                                       timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> OpenPipeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise OpenPipeUnreachable(f"OpenPipe timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise OpenPipeUnreachable(f"OpenPipe unreachable: {exc!r}") from exc
        if response.status_code < 300:
            try:
                return response.json()
            except ValueError as exc:
                raise OpenPipeServerError("OpenPipe answered with invalid JSON", response.status_code) from exc
        message = _message(response)
        status = response.status_code
        if status in (401, 403):
            raise OpenPipeAuthError(f"OpenPipe refused the API key: {message}", status)
        if status == 404:
            raise OpenPipeNotFound(f"OpenPipe: not found: {message}", status)
        if status == 429:
            retry_after = response.headers.get("retry-after")
            raise OpenPipeRateLimited(f"OpenPipe rate limit: {message}", status,
                                      float(retry_after) if retry_after and _is_number(retry_after) else None)
        if status >= 500:
            raise OpenPipeServerError(f"OpenPipe error {status}: {message}", status)
        raise OpenPipeError(f"OpenPipe rejected the request ({status}): {message}", status)

    async def report(self, record: dict) -> dict:
        """POST /report: {requestedAt, receivedAt, reqPayload, respPayload, statusCode, errorMessage?, tags?}."""
        return await self._call("POST", "/report", record)

    async def list_datasets(self) -> list[dict]:
        return (await self._call("GET", "/datasets")).get("data", [])

    async def create_dataset(self, name: str) -> dict:
        return await self._call("POST", "/datasets", {"name": name})

    async def dataset_by_name(self, name: str, create: bool = True) -> dict:
        for dataset in await self.list_datasets():
            if dataset.get("name") == name:
                return dataset
        if not create:
            raise OpenPipeNotFound(f"OpenPipe: no dataset named {name!r}", 404)
        return await self.create_dataset(name)

    async def add_entries(self, dataset_id: str, entries: list[dict]) -> dict:
        """POST /datasets/{id}/entries; partial success: `entries_created` and per-entry `errors`."""
        return await self._call("POST", f"/datasets/{dataset_id}/entries", {"entries": entries})


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:200]
    return str(body)[:200]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
