"""Size and SHA-256 of many remote files with few commands (GNU ``stat``, ``openssl`` or
``sha256sum``).

One command per file costs a round trip and two process starts each (seconds for a folder
of 1,000 small files); one command for everything could exceed the argument-length limit.
So paths are packed into scripts of bounded size, each path quoted with ``shlex.quote``.
A script first prints one presence line per path (``1``/``0``; a symbolic link counts as
missing: it is not the file that was written or listed), then runs ``stat`` and the hasher
once over the files that are present: both print exactly one line per file in
argument order (names with a newline or backslash are escaped), so no file name is parsed.

``openssl dgst`` is preferred when installed: it uses the CPU's SHA instructions and hashes
~4x faster than coreutils' ``sha256sum`` (0.16 s vs 0.65 s for 200 MB here), which matters
because a transfer is not finished until the far side has hashed every byte. OpenSSL older
than 3.0 does not escape names, so batches with such names use ``sha256sum``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Sequence

from workers.transports.base import CommandResult, FileDigest, TransportError

_MARK = "::"
_HEAD = (
    "command -v sha256sum >/dev/null 2>&1 && command -v stat >/dev/null 2>&1 || "
    "{ echo 'sha256sum and stat (GNU coreutils) are required' >&2; exit 127; }\n"
    "set --\n"
    "for p in"
)
_TAIL = (
    "; do\n"
    '  if [ -f "$p" ] && [ ! -L "$p" ] && [ -r "$p" ]; then set -- "$@" "$p"; echo 1\n'
    "  else echo 0; fi\n"
    "done\n"
    f"echo {_MARK}\n"
    '[ $# -eq 0 ] || stat -L -c %s -- "$@" || exit 3\n'
    f"echo {_MARK}\n"
    "if [ $# -eq 0 ]; then :\n"
    'elif [ "$use_openssl" = 1 ] && command -v openssl >/dev/null 2>&1; then\n'
    '  openssl dgst -sha256 -r "$@" || exit 3\n'
    'else sha256sum -b -- "$@" || exit 3\n'
    "fi\n"
)


def digest_script_batches(
    paths: Sequence[str], *, max_bytes: int
) -> Iterator[tuple[Sequence[str], str]]:
    """Yield ``(paths, script)`` pairs, each script at most ``max_bytes`` long (UTF-8)."""
    fixed = len(_HEAD) + len(_TAIL) + len("use_openssl=0\n")
    start = 0
    while start < len(paths):
        words: list[str] = []
        size = fixed
        end = start
        while end < len(paths):
            if not paths[end].startswith("/"):
                raise ValueError(f"not an absolute path: {paths[end]!r}")
            word = " " + shlex.quote(paths[end])
            word_size = len(word.encode())
            if fixed + word_size > max_bytes:
                raise ValueError(f"path too long for one command: {paths[end][:80]!r}...")
            if size + word_size > max_bytes:
                break
            words.append(word)
            size += word_size
            end += 1
        batch = paths[start:end]
        use_openssl = 0 if any("\n" in p or "\\" in p for p in batch) else 1
        yield batch, f"use_openssl={use_openssl}\n" + _HEAD + "".join(words) + _TAIL
        start = end


def parse_digest_output(
    result: CommandResult, count: int, *, where: str
) -> list[FileDigest | None]:
    """The digests printed by one batch script, in path order; None for missing files."""
    if result.exit_code == 127:
        raise TransportError(f"{where}: {result.stderr.strip()}; install them", permanent=True)
    lines = result.stdout.split("\n")
    try:
        first = lines.index(_MARK)
        second = lines.index(_MARK, first + 1)
    except ValueError:
        first = second = -1
    present = lines[:first]
    sizes = lines[first + 1 : second]
    hashes = [line for line in lines[second + 1 :] if line]
    found = present.count("1")
    if result.exit_code != 0 or len(present) != count or not len(sizes) == len(hashes) == found:
        raise TransportError(
            f"{where}: checksum command failed (exit {result.exit_code}): "
            f"{result.stderr.strip()[:500]}; will retry",
            permanent=False,
        )
    digests: list[FileDigest | None] = []
    pairs = iter(zip(sizes, hashes, strict=True))
    for flag in present:
        if flag != "1":
            digests.append(None)
            continue
        size, line = next(pairs)
        # "<hash> *<name>", or "\<hash> *<escaped name>" when the name needs escaping
        # (sha256sum -b and openssl dgst -r print the same)
        digests.append(FileDigest(size=int(size), sha256=line.removeprefix("\\")[:64]))
    return digests
