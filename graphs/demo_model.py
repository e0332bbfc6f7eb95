"""What the graphs do differently on the embedded demo model (Gemma 3 270M base, graphs/local_llm.py).

The model picks the wrong tool for most questions and, unconstrained, writes arguments that run on or are no
valid value. llama.cpp builds its tool-call grammar from each tool's JSON schema, so tightening the schemas
here constrains the arguments while the model still writes them; the chat template shows the model only
names and types, never the long enums.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

# Arithmetic only, starting with a number or a bracket, and bounded: unconstrained, the model appended
# " = 2137*19.000…" until the token limit.
_EXPRESSION = {"pattern": r"^[0-9(][0-9+\-*/(). ]{0,40}$"}

# Tighter argument schemas for built-in tools, by tool and parameter name.
_ARGUMENT_CONSTRAINTS: dict[str, dict[str, dict[str, Any]]] = {
    "calculator": {"expression": _EXPRESSION},
}


@lru_cache
def _iana_zones() -> tuple[str, ...]:
    # Region/City zones only: the legacy aliases (US/…, Etc/…, posix/…) made the model pick odd ones.
    legacy = ("Etc/", "SystemV/", "US/", "posix/", "right/", "Canada/", "Brazil/", "Mexico/", "Chile/")
    return tuple(sorted(z for z in available_timezones() if "/" in z and not z.startswith(legacy)))


def _constraints(tool_name: str) -> dict[str, dict[str, Any]]:
    if tool_name == "current_time":  # only a real IANA zone: freely, the model wrote "Tokyo/Tokyo"
        return {"timezone": {"enum": list(_iana_zones())}}
    return _ARGUMENT_CONSTRAINTS.get(tool_name, {})


def _name_words(name: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", name.lower()) if len(w) > 2}


def demo_tools(tools: list[dict[str, Any]], message: str) -> list[dict[str, Any]]:
    """The tools to force one call from, for the user's message, with constrained argument schemas.

    When the message names a word of exactly one tool's name ("What *time* is it…" → current_time), only that
    tool is offered: left to choose, the model called the calculator for time questions. Otherwise all tools.
    """
    words = set(re.findall(r"[a-z0-9]+", message.lower()))
    named = [t for t in tools if _name_words(t["function"]["name"]) & words]
    chosen = named if len(named) == 1 else tools
    out = []
    for schema in chosen:
        constraints = _constraints(schema["function"]["name"])
        schema = copy.deepcopy(schema)
        # The model copies a description's examples instead of the user's values ("Europe/Paris" for Tokyo).
        description = schema["function"].get("description") or ""
        schema["function"]["description"] = re.split(r",? (?:e\.g\.|such as|for example) ", description)[0]
        if constraints:
            parameters = schema["function"].setdefault("parameters", {})
            properties = parameters.get("properties", {})
            for param, extra in constraints.items():
                if param in properties:
                    properties[param].update(extra)
                    properties[param].pop("default", None)  # required: an omitted argument falls back to UTC
                    parameters["required"] = sorted({*parameters.get("required", []), param})
        out.append(schema)
    return out


# Auto-save extraction: the model only chooses which first-person clauses of the message to keep (a JSON
# enum built from them). Freer, it copied the prompt's placeholder ("...") or invented facts ("I am a student").
def memory_extraction_schema(user_text: str) -> dict[str, Any]:
    clauses = [c.strip() for c in re.split(r"[.!?;\n]+|,? and (?=I |my |My )", user_text) if c.strip()]
    facts = [c[0].upper() + c[1:] + "." for c in clauses if re.match(r"(I|my|My|I'm) ", c)]
    items: dict[str, Any] = {"enum": facts} if facts else {"type": "string", "maxLength": 0}
    return {"type": "object", "required": ["memories"],
            "properties": {"memories": {"type": "array", "maxItems": len(facts), "items": items}}}


def memory_extraction_messages(user_text: str) -> list[BaseMessage]:
    return [
        SystemMessage("Facts about the user worth remembering, from each message, as JSON."),
        HumanMessage("I am vegetarian and my sister is called Mia."),
        AIMessage('{"memories": ["I am vegetarian.", "My sister is called Mia."]}'),
        HumanMessage("What is the weather like today?"),
        AIMessage('{"memories": []}'),
        HumanMessage(user_text),
    ]
