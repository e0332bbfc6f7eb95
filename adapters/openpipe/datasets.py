"""A thread's conversation as OpenPipe dataset entries; regenerated answers as preference pairs."""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage

from loom.adapters.openpipe.reporter import message_dict


def _openai(messages: list[BaseMessage], include_system: bool) -> list[dict]:
    out = []
    for message in messages:
        if isinstance(message, SystemMessage) and not include_system:
            continue
        item = message_dict(message)
        item.pop("name", None) if item.get("role") != "tool" else None
        out.append(item)
    return out


def _final(message: BaseMessage) -> bool:
    """An answer the user saw as the end of a turn (not a tool-calling step)."""
    return isinstance(message, AIMessage) and not message.tool_calls


def _text(message: BaseMessage) -> str:
    return message.text if hasattr(message, "text") else str(message.content)


def preference_pairs(history: list[list[BaseMessage]], final: list[BaseMessage]) -> list[tuple[list, AIMessage,
                                                                                               AIMessage]]:
    """(prompt, chosen, rejected) for every answer that was regenerated.

    `history`: the thread's message lists, oldest checkpoint first. A regeneration replaces the thread's
    messages from the answered turn on (a fork), so an answer that appeared after the same prompt in an earlier
    checkpoint and differs from the answer in the final state was rejected; the final one is chosen.
    """
    chosen_by_prompt: dict[tuple, tuple[list, AIMessage]] = {}
    for i, message in enumerate(final):
        if _final(message):
            chosen_by_prompt[_prompt_key(final[:i])] = (final[:i], message)
    pairs, seen = [], set()
    for messages in history:
        for i, message in enumerate(messages):
            if not _final(message):
                continue
            key = _prompt_key(messages[:i])
            if key not in chosen_by_prompt:
                continue
            prompt, chosen = chosen_by_prompt[key]
            if message.id == chosen.id or _text(message) == _text(chosen) or (key, message.id) in seen:
                continue
            seen.add((key, message.id))
            pairs.append((prompt, chosen, message))
    return pairs


def _prompt_key(messages: list[BaseMessage]) -> tuple:
    """The prompt an answer answered: the turns up to and including the last user message, by id and text."""
    last_user = max((i for i, m in enumerate(messages) if m.type == "human"), default=-1)
    return tuple((m.type, m.id if m.type == "human" else None, _text(m)) for m in messages[:last_user + 1]
                 if m.type in ("human", "ai") and (m.type == "human" or _final(m)))


def thread_entries(final: list[BaseMessage], history: list[list[BaseMessage]], *, split: str | None,
                   metadata: dict, include_system: bool, pairs: bool) -> list[dict]:
    """The conversation (up to its last answer) as one entry, plus one entry per preference pair."""
    last = max((i for i, m in enumerate(final) if _final(m)), default=-1)
    entries = []
    meta = {k: str(v) for k, v in metadata.items()}
    base = {"metadata": meta, **({"split": split} if split else {})}
    if last >= 0:
        entries.append({"messages": _openai(final[:last + 1], include_system), **base,
                        "metadata": {**meta, "kind": "conversation"}})
    if pairs:
        for prompt, chosen, rejected in preference_pairs(history, final):
            entries.append({"messages": _openai([*prompt, chosen], include_system),
                            "rejected_message": _openai([rejected], True)[0], **base,
                            "metadata": {**meta, "kind": "preference_pair"}})
    return entries
