"""Settings from the environment (prefix `LOOM_`). Every default works offline."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from loom.adapters.letta.config import LettaSettings, letta_settings
from loom.graphs.config import GraphSettings, graph_settings


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: bound to a single user, or a trusted proxy that names the user per request."""

    key: str
    user_id: str | None = None
    proxy: bool = False


def parse_api_keys(raw: str | list) -> list[ApiKey]:
    """`KEY=user:ID` binds a key to one user; `KEY=proxy` marks a trusted proxy (e.g. the OpenWebUI pipe).

    Entries are separated by commas or whitespace.
    """
    if isinstance(raw, list):
        return raw
    keys: list[ApiKey] = []
    for entry in raw.replace(",", " ").split():
        key, sep, role = entry.partition("=")
        if not sep or not key:
            raise ValueError(f"LOOM_API_KEYS entry {entry[:4]}… must be KEY=user:ID or KEY=proxy")
        if role == "proxy":
            keys.append(ApiKey(key=key, proxy=True))
        elif role.startswith("user:") and len(role) > 5:
            keys.append(ApiKey(key=key, user_id=role[5:]))
        else:
            raise ValueError(f"LOOM_API_KEYS entry {key[:4]}…: role must be user:ID or proxy, got {role!r}")
    return keys


class Settings(GraphSettings, LettaSettings):
    """The server's settings: the graphs' and Letta's own (LLM, memory, Letta) plus serving, keys and OpenPipe."""

    model_config = SettingsConfigDict(env_prefix="LOOM_", env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)

    database_url: str = Field("sqlite:///./.loom/loom.db", description="sqlite:///path or postgresql://…")

    api_keys: Annotated[list[ApiKey], NoDecode] = Field(default_factory=list)

    # OpenPipe (adapters/openpipe): every chat-model call reported off the request path; datasets from threads.
    openpipe_enabled: bool = Field(False, description="Report every chat-model call to OpenPipe.")
    openpipe_api_key: str | None = None
    openpipe_base_url: str = Field("https://api.openpipe.ai/api/v1", description="OpenPipe API base.")
    openpipe_timeout: float = Field(10.0, description="Seconds one OpenPipe request may take.")
    openpipe_report_chat: bool = Field(True, description="Report chat, MoA and memory calls.")
    openpipe_report_system_tasks: bool = Field(True, description="Report OpenWebUI system tasks (titles, tags).")
    openpipe_report_tool_interactions: bool = Field(True, description="Report calls that offer or call tools.")
    openpipe_user_id: str = Field("plain", description="User id in report metadata: plain, hashed or off.")
    openpipe_metadata: dict[str, str] = Field(default_factory=dict, description="Custom metadata (JSON object).")
    openpipe_queue_size: int = Field(1000, description="Reports held before the oldest is dropped.")
    openpipe_batch_size: int = Field(20, description="Reports sent concurrently per batch.")
    openpipe_max_retries: int = Field(3, description="Retries (backoff with jitter) of one report.")
    openpipe_flush_seconds: float = Field(5.0, description="Seconds shutdown waits to send what is queued.")
    openpipe_preference_pairs: bool = Field(True, description="Datasets: regenerated answers as preference pairs.")

    # Observability (server/observe.py): GET /metrics, the log format.
    metrics_enabled: bool = Field(True, description="Record Prometheus metrics and serve GET /metrics.")
    metrics_key: str | None = Field(None, description="Bearer key for GET /metrics; unset: a proxy API key.")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one JSON object per line.")

    host: str = "127.0.0.1"
    port: int = 8000

    # Serving a team (server/threads.py, server/shutdown.py, server/serving.py).
    workers: int = Field(1, ge=1, description="Processes sharing the port (`loom serve --workers`).")
    run_lease_seconds: float = Field(30.0, gt=0, description="A dead replica's hold on a thread expires after this.")
    shutdown_grace_seconds: float = Field(30.0, ge=0, description="SIGTERM: seconds runs in flight may finish.")

    # The URL clients reach loom at (behind a proxy, say); the OpenWebUI files it serves hold it. Unset: the
    # files hold http://LOOM_HOST:LOOM_PORT, never the request's Host header (anyone can send one).
    public_url: str | None = None

    # Request limits (413/422/431 name the limit that was hit).
    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = Field(16 * 1024, description="Bytes of request headers (names and values) in all.")
    max_messages: int = 500
    max_tools: int = 128

    # POST /tasks/{task} (chat clients' titles, tags, follow-ups): often worth a smaller, cheaper model.
    task_model: str | None = Field(None, description="Model for chat clients' background tasks; unset: llm_model.")

    # Bounds on every run, whatever the model does; a run's context may lower them, never raise them.
    run_timeout: float = Field(600.0, gt=0, allow_inf_nan=False, description="Seconds one run may take in all.")
    run_max_output_tokens: int = Field(32_000, ge=1, description="Tokens the model may stream in one run.")

    # Embedded demo model (used only when llm_base_url is unset).

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value):
        return parse_api_keys(value or "")

    @property
    def served_url(self) -> str:
        """loom's URL for the files it hands out: LOOM_PUBLIC_URL, else http://LOOM_HOST:LOOM_PORT."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # a bind-all address
        return f"http://{host}:{self.port}"

    @property
    def uses_demo_model(self) -> bool:
        return not self.llm_base_url

    @property
    def sqlite_path(self) -> Path | None:
        url = self.database_url
        if url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite:///"))
        return None


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Read the environment again, for the server and for what the graphs and adapters read themselves."""
    for cached in (get_settings, graph_settings, letta_settings):
        cached.cache_clear()
    return get_settings()
