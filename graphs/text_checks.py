"""What counts as text and as an id anywhere loom stores a value (PostgreSQL refuses NUL; UTF-8 cannot hold a
lone surrogate, which JSON's \\uXXXX escapes can still produce)."""

from __future__ import annotations

import re

NOT_TEXT = re.compile("[\x00\ud800-\udfff]")  # NUL, and surrogates (in a decoded str they are always lone)
MAX_ID_LENGTH = 256


def is_text(value: str) -> bool:
    return NOT_TEXT.search(value) is None


def valid_id(value: object) -> bool:
    """An id loom accepts (thread, run, message, memory): 1 to 256 printable characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()
