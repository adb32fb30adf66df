"""Which ``progress_pattern`` regexes the executor may run on a command's output.

Python's ``re`` backtracks, and it cannot be stopped from the thread that runs it: a pattern
like ``(a+)+$`` (nested repetition) takes exponential time on a line of a's, and one like
``.*(?P<done>\\d+).* of`` (repetitions that can match the same characters, one after the
other) takes polynomial time that already reaches minutes on a line of a thousand digits.
The output is written by the program the step runs, so a worker following it must not be
at the mercy of what it prints.

The check is conservative and structural, so that matching a line costs at most about its
length squared:

* only characters, classes (``.``, ``\\d``, ``[...]``) and anchors may be repeated, never a
  group; no alternation, back-reference, look-around or inline flag;
* a repetition must be followed, once the optional items after it are skipped, by the end
  of the pattern or by a required item it cannot match itself, so that where it stops is
  never in doubt (``\\d+ of`` is fine: a digit is never a blank);
* the groups ``done`` and ``total`` hold digits only: ``\\d+``, ``[0-9]+``, ``\\d{1,9}``.

Possessive repetitions (``\\d++``) never backtrack and are exempt from the second rule.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from functools import cache

DIGIT_ATOMS = frozenset({r"\d", "[0-9]"})
_CLASS_ESCAPES = frozenset("dDwWsS")
_ANCHOR_ESCAPES = frozenset("AZbB")
_QUANTIFIER = re.compile(r"\{(\d*)(,?)(\d*)\}")
_FIXED_LENGTH_ESCAPES = {"x": 2, "u": 4, "U": 8}
_CONTROL_ESCAPES = {"a": "\a", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


@dataclass
class _Token:
    kind: str  # "atom", "anchor", "open", "close"
    source: str = ""
    char: str | None = None  # for a literal character
    name: str | None = None  # for a named group
    low: int = 1
    high: int | None = 1  # None: unbounded
    possessive: bool = False
    quantifier: str = ""

    @property
    def shown(self) -> str:
        return (self.source if self.char is None else repr(self.char)) + self.quantifier

    @property
    def varies(self) -> bool:
        return self.low != self.high and not self.possessive


class _Unsupported(ValueError):
    pass


def _tokens(pattern: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            token, i = _escape(pattern, i)
        elif char == "[":
            end = _class_end(pattern, i)
            token, i = _Token("atom", pattern[i:end]), end
        elif char == "(":
            token, i = _group_open(pattern, i)
        elif char == ")":
            token, i = _Token("close", ")"), i + 1
        elif char == "|":
            raise _Unsupported("alternation '|' is not supported")
        elif char in "^$":
            token, i = _Token("anchor", char), i + 1
        elif char == ".":
            token, i = _Token("atom", char), i + 1
        elif char in "*+?" or (char == "{" and _QUANTIFIER.match(pattern, i)):
            if not tokens or tokens[-1].kind != "atom":
                what = "a group" if tokens and tokens[-1].kind == "close" else "this"
                raise _Unsupported(
                    f"{what} may not be repeated (at {pattern[: i + 1]}): a repeated group "
                    "can backtrack for hours; repeat single characters or classes only"
                )
            i = _quantify(tokens[-1], pattern, i)
            continue
        else:
            token, i = _Token("atom", re.escape(char), char=char), i + 1
        tokens.append(token)
    return tokens


def _escape(pattern: str, i: int) -> tuple[_Token, int]:
    letter = pattern[i + 1]
    if letter in _CLASS_ESCAPES:
        return _Token("atom", pattern[i : i + 2]), i + 2
    if letter in _ANCHOR_ESCAPES:
        return _Token("anchor", pattern[i : i + 2]), i + 2
    if letter.isdigit() or letter == "g":
        raise _Unsupported("back-references are not supported")
    # re.compile accepted the whole pattern, so the escape is well formed
    if letter in _FIXED_LENGTH_ESCAPES:
        end = i + 2 + _FIXED_LENGTH_ESCAPES[letter]
        literal = chr(int(pattern[i + 2 : end], 16))
    elif letter == "N":
        end = pattern.index("}", i) + 1
        literal = unicodedata.lookup(pattern[i + 3 : end - 1])
    else:
        end = i + 2
        literal = _CONTROL_ESCAPES.get(letter, letter)
    return _Token("atom", pattern[i:end], char=literal), end


def _class_end(pattern: str, i: int) -> int:
    j = i + 1
    if pattern[j : j + 1] == "^":
        j += 1
    if pattern[j : j + 1] == "]":
        j += 1
    while pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _group_open(pattern: str, i: int) -> tuple[_Token, int]:
    if pattern.startswith("(?P<", i):
        end = pattern.index(">", i)
        return _Token("open", pattern[i : end + 1], name=pattern[i + 4 : end]), end + 1
    if pattern.startswith("(?:", i):
        return _Token("open", "(?:"), i + 3
    if pattern.startswith("(?", i):
        raise _Unsupported(
            f"{pattern[i : i + 4]!r}...: look-arounds, conditionals, comments and inline "
            "flags are not supported"
        )
    return _Token("open", "("), i + 1


def _quantify(token: _Token, pattern: str, i: int) -> int:
    start, char = i, pattern[i]
    if char == "{":
        match = _QUANTIFIER.match(pattern, i)
        assert match is not None
        low, comma, high = match.groups()
        token.low = int(low or 0)
        token.high = (int(high) if high else None) if comma else token.low
        i = match.end()
    else:
        token.low, token.high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        i += 1
    if pattern[i : i + 1] == "?":
        i += 1  # lazy: still backtracks, one step the other way
    elif pattern[i : i + 1] == "+":
        token.possessive = True
        i += 1
    token.quantifier = pattern[start:i]
    return i


def _can_both_match(first: _Token, second: _Token) -> bool:
    """Whether one character could be matched by both single-character items."""
    if second.char is not None:
        return re.fullmatch(first.source, second.char) is not None
    if first.char is not None:
        return re.fullmatch(second.source, first.char) is not None
    return _overlap(first.source, second.source)


@cache
def _overlap(first: str, second: str) -> bool:
    return re.compile(f"(?={first}){second}").search(_every_character()) is not None


@cache
def _every_character() -> str:
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)


def _repetition_problems(tokens: list[_Token]) -> list[str]:
    problems = []
    items = [t for t in tokens if t.kind in ("atom", "anchor")]
    for position, first in enumerate(items):
        if first.kind != "atom" or not first.varies:
            continue
        for following in items[position + 1 :]:
            if following.kind == "anchor":
                if following.source in ("$", r"\Z"):
                    break
                continue  # zero-width: the next character still follows the repetition
            if _can_both_match(first, following):
                problems.append(
                    f"{first.shown} is followed by {following.shown}, "
                    "which can match the same characters: a long line could make the match "
                    "backtrack for minutes; put a character the repetition cannot match "
                    r"between them, as in (?P<done>\d+) of (?P<total>\d+)"
                )
                break
            if following.low >= 1:
                break
    return problems


def _group_problems(tokens: list[_Token]) -> list[str]:
    problems = []
    for position, token in enumerate(tokens):
        if token.name not in ("done", "total"):
            continue
        inside = tokens[position + 1 : position + 3]
        digits = (
            len(inside) == 2
            and inside[1].kind == "close"
            and inside[0].source in DIGIT_ATOMS
            and inside[0].low >= 1
        )
        if not digits:
            problems.append(
                f"the group {token.name!r} must match digits only, like "
                rf"(?P<{token.name}>\d+) or (?P<{token.name}>[0-9]+)"
            )
    return problems


def progress_pattern_problems(pattern: str) -> list[str]:
    """Why ``pattern`` may not be run on a command's output; empty when it may.

    ``pattern`` must compile with :func:`re.compile`.
    """
    try:
        tokens = _tokens(pattern)
    except _Unsupported as exc:
        return [str(exc)]
    return _group_problems(tokens) + _repetition_problems(tokens)
