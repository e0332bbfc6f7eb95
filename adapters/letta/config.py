"""The Letta server the `letta` graph and the letta memory backend talk to (environment, prefix `LOOM_`)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LettaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOM_", env_file=".env", extra="ignore")

    letta_base_url: str = Field("http://localhost:8283", description="Letta server (Letta Cloud: api.letta.com).")
    letta_api_key: str | None = None
    letta_agent_id: str | None = Field(None, description="Agent of the `letta` graph unless the context names one.")
    letta_timeout: float = Field(120.0, description="Seconds of silence before a Letta request fails (pings: 30 s).")
    letta_max_retries: int = Field(3, description="Retries (backoff with jitter) before a Letta response starts.")
    letta_memory_model: str = Field("openai/gpt-4o-mini", description="Model of the per-user memory agents.")
    letta_memory_min_score: float = Field(
        0.3, ge=0, le=1, description="Letta's archival search returns its nearest passages however unrelated: "
                                     "loom keeps those whose relevance (0..1) to the query reaches this.")
    letta_memory_embedding: str = Field("openai/text-embedding-3-small", description="Their embedding model.")


@lru_cache
def letta_settings() -> LettaSettings:
    return LettaSettings()
