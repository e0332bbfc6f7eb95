"""Runtime-context fields every graph shares. The server fills them per run; graphs only read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field

# Fields the server sets from the request (identity, AG-UI tools and context); clients cannot override them
# through `forwardedProps.context`, and `GET /agents` leaves them out of the editable schema.
SERVER_FIELDS = frozenset({"user_id", "frontend_tools", "client_context"})


@dataclass(kw_only=True)
class BaseContext:
    user_id: str = field(default="local", metadata={"description": "The end user this run acts for."})
    frontend_tools: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"description": "AG-UI frontend tools ({name, description, parameters}) the client executes."},
    )
    client_context: list[dict[str, str]] = field(
        default_factory=list,
        metadata={"description": "AG-UI context entries ({description, value}) shown to the model."},
    )
    # The server enforces these; a run may ask for less than LOOM_RUN_TIMEOUT / LOOM_RUN_MAX_OUTPUT_TOKENS.
    run_timeout: Annotated[float | None, Field(gt=0, le=86400, allow_inf_nan=False)] = field(
        default=None, metadata={"description": "Seconds this run may take; at most LOOM_RUN_TIMEOUT."}
    )
    max_output_tokens: Annotated[int | None, Field(ge=1, le=10_000_000)] = field(
        default=None, metadata={"description": "Tokens the model may stream in this run; at most "
                                               "LOOM_RUN_MAX_OUTPUT_TOKENS."}
    )


@dataclass(kw_only=True)
class SamplingContext:
    """Sampling settings for every model call of a run (the OpenAI edge maps a request's parameters here)."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = field(
        default=None, metadata={"description": "Sampling temperature; default: the model server's."})
    max_tokens: Annotated[int, Field(ge=1)] | None = field(
        default=None, metadata={"description": "Maximum tokens per model call; default: the model server's."})
    stop: list[str] | None = field(default=None, metadata={"description": "Stop sequences."})
    seed: int | None = field(default=None, metadata={"description": "Sampling seed, where the model takes one."})

    def call_options(self) -> dict[str, Any]:
        """What the chat model takes per call (temperature and max_tokens choose the model instance)."""
        return {k: v for k, v in (("stop", self.stop), ("seed", self.seed)) if v is not None}


def client_context_prompt(entries: list[dict[str, str]]) -> str:
    """AG-UI `context` entries rendered for a system prompt (empty when there are none)."""
    if not entries:
        return ""
    lines = [f"- {e.get('description', '').strip()}: {e.get('value', '').strip()}" for e in entries]
    return "\n\nContext provided by the application:\n" + "\n".join(lines)
