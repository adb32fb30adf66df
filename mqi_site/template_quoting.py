"""Where a placeholder may stand in a ``remote_commands`` template.

``render_command`` replaces every placeholder with its value quoted by :func:`shlex.quote`.
That makes the value one literal word only where the shell reads the quoted text as an
ordinary word of a command line.  Elsewhere the quoting is undone:

* inside ``'...'`` the quotes shlex adds close and reopen the template's, so the value runs
  unquoted; inside ``"..."``, a here-document or ``$'...'`` they are plain characters or
  mean something else, so ``$(...)`` in the value runs;
* after a backslash the value's opening quote is escaped;
* inside ``$(...)``, backticks, ``${...}`` or arithmetic the text is read again with other
  rules (backticks treat backslashes specially; arithmetic evaluates ``a[$(...)]``);
* in a comment a newline in the value ends the comment and the rest runs;
* glued to ``$``, ``~``, globs, braces or quotes the value joins an expansion;
  followed by ``=`` it can turn its word into a variable assignment;
* ``eval``, ``sh -c``, ``ssh``, ``xargs`` and their kind read an argument as shell code
  again, so no quoting done here survives them.

So a placeholder must be part of a plain word at the top level of the command: a word made
only of placeholders and the characters shlex itself leaves unquoted (letters, digits and
``@%+=:,./-_``), delimited by blanks, the start or end, or an operator (``; & | ( ) < >``).
``--out={output_dir}`` and ``{case_dir}/input`` are such words: the plain prefix and suffix
cannot change how the quoted value is read, and the word stays one word.

The scan below is a small shell lexer, not a shell parser.  Where it cannot tell what a
shell would do it refuses: every placeholder after ``$'`` (which sh and bash quote
differently) or a here-document, every placeholder in a nested context.  The list of
commands that run text as shell code again covers shells and the usual programs and
builtins; a program that evaluates its own arguments is beyond what a template check sees.
"""

from __future__ import annotations

import posixpath
import string
from dataclasses import dataclass, field

# The characters shlex.quote leaves unquoted: a word of these and quoted values is one word.
PLAIN = frozenset(string.ascii_letters + string.digits + "@%+=:,./-_")
BLANKS = frozenset(" \t\n")
OPERATORS = frozenset(";&|()<>")
# Commands and builtins that read (some of) their arguments as shell code again, or
# evaluate them as arithmetic (bash evaluates ``a[$(cmd)]`` in ``[[ x -eq y ]]``, let, -i).
REPARSERS = frozenset(
    {
        *("sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "busybox"),
        *("eval", "trap", "source", "let", "[["),
        *("declare", "typeset", "local", "export", "readonly", "alias"),
        # they take variable names, and bash evaluates the subscript of a name like a[...]
        *("read", "mapfile", "readarray", "unset", "getopts"),
        *("ssh", "su", "sudo", "xargs", "parallel", "watch", "script"),
    }
)
# ... and these do so with -v (test -v NAME, printf -v NAME, wait -p NAME -n).
NAME_TAKERS = frozenset({"test", "[", "printf", "wait"})
NAME_OPTIONS = frozenset({"-v", "-R", "-p"})
_CONTEXTS = {
    "'": "is inside single quotes",
    '"': "is inside double quotes",
    "$'": "is inside $'...' quotes",
    "`": "is inside a `...` command substitution",
    "$(": "is inside a command or process substitution $(...)",
    "${": "is inside a ${...} parameter expansion",
    "$[": "is inside an arithmetic expansion $[...]",
    "((": "is inside an arithmetic expression ((...))",
}
_CLOSERS = {
    **{"'": "'", '"': '"', "$'": "'", "`": "`"},
    **{"$(": ")", "(": ")", "${": "}", "$[": "]", "((": "))"},
}


_WHOLE_WORD = (
    "a placeholder must be a whole, unquoted shell word (its value is shell-quoted when the "
    "command is rendered)"
)


@dataclass(frozen=True)
class _Placeholder:
    name: str


@dataclass
class _Word:
    """The top-level word being read: its template text and whether it is plain."""

    source: str = ""
    text: str = ""  # what the shell would see of it, quotes removed (for REPARSERS)
    plain: bool = True
    placeholders: list[str] = field(default_factory=list)
    equals_after_placeholder: bool = False

    def add(self, char: str, *, plain: bool) -> None:
        self.source += char
        self.text += char
        self.plain = self.plain and plain
        if char == "=" and self.placeholders:
            self.equals_after_placeholder = True


def _items(template: str) -> list[str | _Placeholder]:
    items: list[str | _Placeholder] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        items.extend(literal)
        if name is not None:
            items.append(_Placeholder(name))
    return items


class _Scan:
    def __init__(self, template: str) -> None:
        self.items = _items(template)
        self.i = 0
        self.stack: list[str] = []
        self.word = _Word()
        self.words: list[str] = []
        self.placeholders: list[str] = []
        self.in_comment = False
        self.refuse_rest: str | None = None  # the reason for every later placeholder
        self.refuse_all: str | None = None  # the reason for every placeholder
        self.duplicating = False  # the next word is the target of >& or <&
        self.problems: dict[str, None] = {}  # ordered and unique

    def peek(self, ahead: int = 1) -> str | _Placeholder | None:
        j = self.i + ahead
        return self.items[j] if j < len(self.items) else None

    def refuse(self, name: str, reason: str, advice: str = _WHOLE_WORD) -> None:
        self.problems[f"placeholder {{{name}}} {reason}; {advice}"] = None

    def run(self) -> list[str]:
        while self.i < len(self.items):
            item = self.items[self.i]
            if isinstance(item, _Placeholder):
                self.placeholder(item.name)
            elif self.in_comment:
                self.in_comment = item != "\n"
            elif self.stack:
                self.nested(item)
            else:
                self.top(item)
            self.i += 1
        self.end_word()
        if self.stack:
            opened = self.stack[-1]
            self.problems[
                f"the template ends before {opened!r} is closed (no {_CLOSERS[opened]!r})"
            ] = None
        self.refuse_reparsed()
        return list(self.problems)

    def placeholder(self, name: str) -> None:
        self.placeholders.append(name)
        if self.in_comment:
            self.refuse(name, "is inside a comment (a newline in its value would end it)")
        elif self.stack:
            self.refuse(name, _CONTEXTS[self.stack[0]])
        elif self.refuse_rest:
            self.refuse(name, self.refuse_rest)
        else:
            self.word.placeholders.append(name)
        self.word.source += f"{{{name}}}"

    def escaped(self) -> None:
        """A backslash: the next item is taken literally (and skipped here)."""
        following = self.peek()
        if isinstance(following, _Placeholder):
            self.placeholders.append(following.name)
            self.refuse(following.name, "follows a backslash, which takes its quote away")
        elif following is not None and not self.stack:
            self.word.source += "\\"
            self.word.add(following, plain=False)  # b\ash is still bash
        self.i += 1

    def top(self, char: str) -> None:
        if char == "\\":
            self.escaped()
        elif char in BLANKS:
            self.end_word()
        elif char == "#" and not self.word.source:
            self.in_comment = True
        elif char in OPERATORS:
            self.end_word()
            self.operator(char)
        elif char in "'\"`":
            self.word.source += char
            self.word.plain = False
            self.stack.append(char)
        elif char == "$":
            self.word.add(char, plain=False)
            self.dollar()
        else:
            self.word.add(char, plain=char in PLAIN)

    def operator(self, char: str) -> None:
        following = self.peek()
        if char == "<" and following == "<":
            if self.peek(2) == "<":  # a here-string: an ordinary word follows
                self.i += 2
            else:
                self.refuse_rest = (
                    "comes after a here-document (<<), whose text the shell expands "
                    "without honouring quotes"
                )
                self.i += 1
        elif char in "<>" and following == "&":
            self.duplicating = True
            self.i += 1
        elif char in "<>" and following == "(":
            self.stack.append("$(")  # process substitution: a nested command line
            self.i += 1
        elif char == "(" and following == "(":
            self.stack.append("((")
            self.arithmetic()
            self.i += 1

    def arithmetic(self) -> None:
        # bash evaluates a variable's value met in arithmetic as an expression, subscripts
        # included: X={case_id}; echo $((X)) runs a[$(...)]; no template needs the two.
        self.refuse_all = (
            "is in a template that evaluates arithmetic, which bash can turn into code"
        )

    def dollar(self) -> None:
        following = self.peek()
        if following == "'":
            # bash reads $'a\'b' as one string, sh as $ and 'a\' then b...: no safe reading
            self.refuse_rest = "comes after $'...', which sh and bash quote differently"
            self.stack.append("$'")
        elif following in ("(", "{", "["):
            self.stack.append(f"${following}")
            if following == "[" or (following == "(" and self.peek(2) == "("):
                self.arithmetic()
            elif following == "{" and self.peek(2) == "!":
                self.refuse_all = (
                    "is in a template that uses ${!...}, which bash reads as a variable name "
                    "(and evaluates its subscript)"
                )
        elif following == '"':
            self.stack.append('"')
        else:
            return
        self.i += 1

    def nested(self, char: str) -> None:
        # Quotes and substitutions never end a word: all of it belongs to the current one.
        context = self.stack[-1]
        self.word.source += char
        if len(self.stack) == 1 and context in ("'", '"') and char != context:
            self.word.text += char  # "bash" is still bash
        if context == "'":
            if char == "'":
                self.stack.pop()
        elif context in ("$'", "`"):
            if char == "\\":
                self.escaped()
            elif char == _CLOSERS[context]:
                self.stack.pop()
        elif context == '"':
            if char == "\\":
                self.escaped()
            elif char == '"':
                self.stack.pop()
            elif char == "`":
                self.stack.append("`")
            elif char == "$":
                self.dollar()
        else:
            self.code(context, char)

    def code(self, context: str, char: str) -> None:
        """Inside $(...), ${...}, $[...] or ((...)): quotes and substitutions nest."""
        previous = self.items[self.i - 1] if self.i else " "
        if char == "\\":
            self.escaped()
        elif char in "'\"`":
            self.stack.append(char)
        elif char == "$":
            self.dollar()
        elif char == "#" and context in ("$(", "(") and previous in BLANKS | OPERATORS:
            self.in_comment = True
        elif char == "<" and self.peek() == "<" and context in ("$(", "("):
            self.operator(char)
        elif char == "(" and context in ("$(", "((", "("):
            self.stack.append("(")
        elif context == "((" and char == ")":
            self.stack.pop()
            if self.peek() == ")":
                self.i += 1
        elif char == _CLOSERS[context]:
            self.stack.pop()

    def end_word(self) -> None:
        word, self.word = self.word, _Word()
        if not word.source:
            return
        if word.text:
            self.words.append(word.text)
        duplicating, self.duplicating = self.duplicating, False
        for name in word.placeholders:
            if duplicating:
                # bash expands the target of n>&word once more when it is not a number
                self.refuse(name, "is in the target of a >& or <& redirection")
            elif not word.plain:
                self.refuse(
                    name,
                    f"is joined to shell syntax in the word {word.source!r} (only letters, "
                    "digits and @%+=:,./-_ may touch a placeholder)",
                )
            elif word.equals_after_placeholder:
                self.refuse(
                    name,
                    f"is followed by '=' in the word {word.source!r}, which could make the "
                    "word a variable assignment",
                )

    def refuse_reparsed(self) -> None:
        names = {posixpath.basename(word) for word in self.words}
        reparsers = sorted(names & REPARSERS)
        if names & NAME_OPTIONS:
            reparsers += sorted(names & NAME_TAKERS)
        for name in dict.fromkeys(self.placeholders) if self.refuse_all else ():
            self.refuse(name, self.refuse_all)
        if not reparsers:
            return
        for name in dict.fromkeys(self.placeholders):
            self.refuse(
                name,
                f"is in a command line that runs {reparsers[0]!r}, which can read its "
                "arguments as shell code again",
                "pass values to the program itself as plain arguments",
            )


def placeholder_quoting_problems(template: str) -> list[str]:
    """Why the quoting of ``template``'s placeholders could be undone; empty when it cannot.

    ``template`` must already parse as a ``str.format`` template.
    """
    return _Scan(template).run()
