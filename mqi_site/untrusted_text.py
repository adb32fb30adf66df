"""Text from outside the system (a command's output, a folder name, nvidia-smi) on its way
into the database or onto an operator's terminal."""

from __future__ import annotations

import re

# PostgreSQL's text type refuses NUL; lone surrogates (from undecodable file names) are not
# UTF-8 at all.  Either would make the whole statement fail, and with it the outcome.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# C0 and C1 controls (ANSI escape sequences, carriage returns, newlines in one-line fields),
# and the invisible characters that reorder or hide text on a terminal.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def storable(text: str) -> str:
    """``text`` with what a PostgreSQL text column refuses replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text)


def printable(value: object) -> str:
    """``str(value)`` with control and invisible characters shown as escapes (``\\x1b``),
    so that what a command prints cannot move the cursor, recolour or forge lines."""
    return _UNPRINTABLE.sub(_escape, str(value))


def has_unprintable(value: object) -> bool:
    """Whether ``value`` holds a control or invisible character (one :func:`printable`
    would escape)."""
    return _UNPRINTABLE.search(str(value)) is not None


_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
