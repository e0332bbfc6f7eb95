"""What the graphs read from the environment (prefix `LOOM_`): the LLM endpoint, model defaults, tools, memory.

The graphs load on their own (LangGraph Studio, `langgraph dev`) as well as inside loom's server, so they read
their settings here rather than from the server; the server's `Settings` extends this class. Every default
works offline.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_MODEL = "gemma-3-270m"  # the alias the embedded demo model answers to (graphs/local_llm.py)


class GraphSettings(BaseSettings):
    # hide_input_in_errors: a refused URL or key must not be echoed into logs.
    model_config = SettingsConfigDict(env_prefix="LOOM_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    # The OpenAI-compatible endpoint every graph uses. Unset: `loom serve` starts the embedded demo model.
    llm_base_url: str | None = None
    llm_api_key: str = "not-needed"
    llm_model: str = DEMO_MODEL
    llm_timeout: float = Field(60.0, description="Seconds before one LLM request times out.")
    llm_max_retries: int = Field(2, description="Retries (exponential backoff with jitter) before any token.")
    # Set by `loom serve` when it started the embedded demo model, so graphs apply its quirks (stop strings,
    # temperature 0, bounded output, forced tool choice).
    demo_model: bool = False
    local_llm_port: int = Field(0, description="Port of the embedded demo model (0: any free port).")
    local_llm_threads: int = Field(2, description="CPU threads of the embedded demo model.")

    extra_tools: str = Field("", description="Comma-separated modules whose TOOLS list the agent graph adds.")

    # Long-term memory (graphs/memory_store.py). Limits answer with an error naming the setting.
    memory_backend: str = Field("store", description="store (LangGraph store: SQLite/PostgreSQL) or letta.")
    memory_max_per_user: int = Field(1000, description="Memories one user may keep.")
    memory_max_length: int = Field(2000, description="Characters in one memory.")
    memory_search: bool = Field(True, description="Whether search (REST, tools, recall) is available.")
    memory_recall: int = Field(5, description="Memories recalled into each `memory` turn by default.")
    # Semantic search, fused with BM25: an OpenAI-compatible embeddings endpoint when the URL is set (e.g.
    # https://api.openai.com/v1); else the offline embedding model of the `memory` extra when installed; else
    # lexical search only.
    memory_semantic: bool = Field(True, description="Use embeddings when a model is available.")
    memory_embeddings_url: str | None = None
    memory_embeddings_model: str = Field("text-embedding-3-small", description="Model name at the endpoint.")
    memory_embeddings_api_key: str = "not-needed"

    @field_validator("llm_base_url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None) -> str | None:
        # The openai client sends its own Authorization header; user:pass@ would fail every run instead.
        if url and (urlsplit(url).username or urlsplit(url).password):
            raise ValueError("LOOM_LLM_BASE_URL must not contain user:password@; put the key in LOOM_LLM_API_KEY")
        return url


@lru_cache
def graph_settings() -> GraphSettings:
    return GraphSettings()
