"""Settings from the environment (prefix `LOOM_`). Every default works offline."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_MODEL = "gemma-3-270m"


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOM_", env_file=".env", extra="ignore")

    # The OpenAI-compatible endpoint every graph uses. Unset: `loom serve` starts the embedded demo model.
    llm_base_url: str | None = None
    llm_api_key: str = "not-needed"
    llm_model: str = DEMO_MODEL
    llm_timeout: float = Field(60.0, description="Seconds before one LLM request times out.")
    llm_max_retries: int = Field(2, description="Retries (exponential backoff with jitter) before any token.")

    database_url: str = Field("sqlite:///./.loom/loom.db", description="sqlite:///path or postgresql://…")

    api_keys: Annotated[list[ApiKey], NoDecode] = Field(default_factory=list)

    extra_tools: str = Field("", description="Comma-separated modules whose TOOLS list the agent graph adds.")

    # Letta (graphs/letta.py, adapters/letta): the REST server the `letta` graph and the letta memory backend use.
    letta_base_url: str = Field("http://localhost:8283", description="Letta server (Letta Cloud: api.letta.com).")
    letta_api_key: str | None = None
    letta_agent_id: str | None = Field(None, description="Agent of the `letta` graph unless the context names one.")
    letta_timeout: float = Field(120.0, description="Seconds of silence before a Letta request fails (pings: 30 s).")
    letta_max_retries: int = Field(3, description="Retries (backoff with jitter) before a Letta response starts.")
    letta_memory_model: str = Field("openai/gpt-4o-mini", description="Model of the per-user memory agents.")
    letta_memory_embedding: str = Field("openai/text-embedding-3-small", description="Their embedding model.")

    # Long-term memory (graphs/memory_store.py). Limits answer with an error naming the setting.
    memory_backend: str = Field("store", description="store (LangGraph store: SQLite/PostgreSQL) or letta.")
    memory_max_per_user: int = Field(1000, description="Memories one user may keep.")
    memory_max_length: int = Field(2000, description="Characters in one memory.")
    memory_search: bool = Field(True, description="Whether search (REST, tools, recall) is available.")
    memory_recall: int = Field(5, description="Memories recalled into each `memory` turn by default.")
    # Semantic search, fused with BM25: an OpenAI-compatible embeddings endpoint when the URL is set (e.g.
    # https://api.openai.com/v1); else the offline all-MiniLM-L6-v2 of the `memory` extra when installed; else
    # lexical search only.
    memory_semantic: bool = Field(True, description="Use embeddings when a model is available.")
    memory_embeddings_url: str | None = None
    memory_embeddings_model: str = Field("text-embedding-3-small", description="Model name at the endpoint.")
    memory_embeddings_api_key: str = "not-needed"

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

    host: str = "127.0.0.1"
    port: int = 8000

    # Request limits (413/422 name the limit that was hit).
    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 500
    max_tools: int = 128

    # Embedded demo model (used only when llm_base_url is unset). `demo_model` is set by `loom serve` when
    # it started that model, so graphs apply its quirks (plain template, stop strings, forced tool choice).
    demo_model: bool = False
    local_llm_port: int = 0
    local_llm_threads: int = 2

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value):
        return parse_api_keys(value or "")

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
