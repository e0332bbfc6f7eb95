"""Re-sent assistant turns matched with the stored thread, so continuing a conversation does not fork it.

An OpenAI client sends each earlier answer back as one assistant message with the text it was shown; loom
stored that turn as the model's messages (server-side tool calls, their results, the answer), under ids the
client never saw. Without help, every continuation would fork the thread at the first answer and replace
the stored turn with the client's flattened copy (losing the tool calls the model made).

A sent turn that shows what a stored turn said (the same text, and no tool call the stored turn lacks) is
replaced by the stored turn itself, ids included; reconciliation then finds the history unchanged and
appends only what is new. A turn that differs (edited, regenerated elsewhere) is left as sent: loom forks
there, as on the AG-UI endpoint.
"""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from loom.adapters.agui.messages import text_of, to_agui


def adopt_stored_turns(sent: list[dict], stored: list[BaseMessage]) -> list[dict]:
    """`sent` (AG-UI wire messages with derived ids) with each matching assistant turn taken from `stored`."""
    out: list[dict] = []
    i = j = 0
    while j < len(sent) and i < len(stored):
        if sent[j]["role"] in ("user", "system"):
            if stored[i].id != sent[j]["id"]:
                break
            out.append(sent[j])
            i, j = i + 1, j + 1
            continue
        j_end = _turn_end(sent, j, lambda m: m["role"] in ("user", "system"))
        i_end = _turn_end(stored, i, lambda m: isinstance(m, (HumanMessage, SystemMessage)))
        if not _same_turn(sent[j:j_end], stored[i:i_end]):
            break
        out += [m for m in to_agui(stored[i:i_end]) if m["role"] != "reasoning"]
        i, j = i_end, j_end
    return out + sent[j:]


def _turn_end(messages: list, start: int, opens_turn) -> int:
    end = start
    while end < len(messages) and not opens_turn(messages[end]):
        end += 1
    return end


def _same_turn(sent: list[dict], stored: list[BaseMessage]) -> bool:
    if not stored or not isinstance(stored[-1], AIMessage) or stored[-1].tool_calls:
        return False  # only a finished turn: one waiting for tool results is continued by what was sent
    sent_calls = {c["id"] for m in sent for c in m.get("toolCalls") or []}
    stored_calls = {c["id"] for m in stored if isinstance(m, AIMessage) for c in m.tool_calls}
    sent_results = {m["toolCallId"] for m in sent if m["role"] == "tool"}
    stored_results = {m.tool_call_id for m in stored if isinstance(m, ToolMessage)}
    if not (sent_calls <= stored_calls and sent_results <= stored_results):
        return False
    shown = " ".join(" ".join(str(m.get("content") or "") for m in sent if m["role"] == "assistant").split())
    said = " ".join(" ".join(text_of(m.content) for m in stored if isinstance(m, AIMessage)).split())
    return shown == said
