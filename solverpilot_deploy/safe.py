"""Text a host sent, made safe for a terminal: the one rule every table and message follows.

A host's words (a state file's fields, a DB column, a step's ``error=`` line, ssh's stderr)
may hold escape sequences: OSC 52 (write the clipboard), a title change, a screen clear, a
cursor move that hides the lines before it. ``printable`` shows each character a terminal could
act on as a visible escape instead: the C0 controls (tab and newline too: a cell or message
stays one line), DEL, the C1 controls (U+0080-U+009F, which some terminals take for ESC [ and
the like) as ``\\xNN``; the other characters Python does not call printable (Unicode format
characters such as the bidi overrides, line and paragraph separators, lone surrogates, private
use, unassigned) as ``\\uNNNN`` or ``\\UNNNNNNNN``. Spaces of every kind (U+00A0 ...) and
everything else pass unchanged; a backslash is not doubled, so ``\\x1b`` on the screen may be a
host's own four characters as well. JSON output needs none of this: ``json.dumps`` (with its
default ``ensure_ascii``) writes every control character and every non-ASCII one as ``\\u``.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any


def _shown(char: str) -> str:
    if char.isprintable() or unicodedata.category(char) == "Zs":
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on shown as a visible escape."""
    if text.isprintable():  # the usual case, at C speed
        return text
    return "".join(_shown(char) for char in text)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # one for all: status reads millions


def host_object(text: str) -> dict[str, Any] | None:
    """A JSON object a host sent (a state file), or None when it is not one: not JSON, nested
    too deep for the parser, or holding NaN or Infinity, which Python would read and print
    back as no JSON reader takes them."""
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
        return None
    return value if isinstance(value, dict) else None
