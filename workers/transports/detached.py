"""Long commands on a GPU server that outlive the connection that started them.

A run lives in its own folder, ``run_dir``, on the server::

    run_dir/command     the shell command (run with ``sh -c``)
    run_dir/wrapper.sh  what runs it: environment, process group, exit code
    run_dir/wrapper     "PID STARTTIME" of the wrapper (so a reused PID is not mistaken for it)
    run_dir/boot_id     the kernel boot id at start (PIDs mean nothing after a reboot)
    run_dir/pgid        the command's process group id, written before start returns
    run_dir/stdout, run_dir/stderr
    run_dir/exit_code   written (tmp + rename) by the wrapper when the command ends
    run_dir/kill_requested  present once kill_group was called

Creating ``run_dir`` with ``mkdir`` is the lock: a second start finds it and does nothing
(after waiting, as the first one does, until the command has started), so a retried or
re-delivered message never runs the command twice. The command runs under
``setsid`` in a session and process group of its own, a child of the wrapper, which is not
in that group: killing the group leaves the wrapper alive to record the exit code
(143 after SIGTERM, 137 after SIGKILL). Nothing holds the SSH session: stdin is /dev/null,
output goes to files, so a dropped connection, a restarted worker or a killed sshd does not
touch the command, and the next :func:`poll` simply reads the files again.

Every value put into shell text is quoted with :func:`shlex.quote`; ``command`` itself is a
rendered shell command whose values were quoted by whoever rendered it.
"""

from __future__ import annotations

import base64
import math
import posixpath
import re
import shlex
from dataclasses import dataclass
from enum import StrEnum

from workers.transports.base import CommandResult, Transport, TransportError

COMMAND_TIMEOUT_SEC = 30.0
START_WAIT_SEC = 10.0
POLL_INTERVAL_SEC = 0.05
# The wrapper writes its pgid file within milliseconds of its start, and every step waits
# for it: look more often than the kill loops do (they scan /proc on each look).
START_POLL_INTERVAL_SEC = 0.005
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Shell functions shared by the scripts below. A process counts as alive unless it is a
# zombie: a dead process whose parent (often init inside containers) has not reaped it yet.
_PROC_FUNCTIONS = r"""
started_at() {
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || return 1
  set -- ${line##*) }
  [ "$1" != Z ] || return 1
  echo "${20}"
}
group_alive() {
  for f in /proc/[0-9]*/stat; do
    { read -r line < "$f"; } 2>/dev/null || continue
    set -- ${line##*) }
    if [ "$3" = "$pgid" ] && [ "$1" != Z ]; then return 0; fi
  done
  return 1
}
same_boot() {
  then_=$(cat "$d/boot_id" 2>/dev/null) || return 1
  [ "$then_" = "$(cat /proc/sys/kernel/random/boot_id)" ]
}
wrapper_alive() {
  { read -r wpid wstart < "$d/wrapper"; } 2>/dev/null || return 1
  same_boot && [ "$(started_at "$wpid")" = "$wstart" ]
}
"""

_WRAPPER = r"""d=$1
{ read -r line < "/proc/$$/stat"; } 2>/dev/null
set -- ${line##*) }
echo "$$ ${20}" > "$d/wrapper.tmp" && mv -f "$d/wrapper.tmp" "$d/wrapper"
setsid_bin=$(command -v setsid)
cmd=$(cat "$d/command")
(
%(exports)s
  exec "$setsid_bin" /bin/sh -c "$cmd"
) </dev/null >"$d/stdout" 2>"$d/stderr" &
child=$!
echo "$child" > "$d/pgid.tmp" && mv -f "$d/pgid.tmp" "$d/pgid"
wait "$child"
code=$?
echo "$code" > "$d/exit_code.tmp" && mv -f "$d/exit_code.tmp" "$d/exit_code"
"""

_START = r"""d=%(run_dir)s
cwd=%(cwd)s
if [ ! -d "$cwd" ]; then echo "working directory $cwd does not exist" >&2; exit 3; fi
command -v setsid >/dev/null || { echo "setsid (util-linux) is not installed" >&2; exit 3; }
mkdir -p -- %(parent)s || exit 3
# the run folder holds the environment: private; the command itself keeps the usual umask
umask_before=$(umask)
umask 077
if ! mkdir -- "$d" 2>/dev/null; then
  if [ ! -d "$d" ]; then echo "cannot create run folder $d" >&2; exit 3; fi
  # Another start holds the lock. It may be between its mkdir and its command's start (a
  # message delivered twice at once): wait as it does, so that a poll right after this
  # sees the command, not a run folder with nothing running in it yet.
  i=0
  while [ ! -e "$d/pgid" ] && [ ! -e "$d/exit_code" ] && [ $i -lt %(start_polls)d ]; do
    sleep %(interval)s; i=$((i + 1))
  done
  echo MQI_ALREADY_STARTED; exit 0
fi
printf '%%s' %(command)s > "$d/command" &&
printf '%%s' %(wrapper)s > "$d/wrapper.sh" &&
cat /proc/sys/kernel/random/boot_id > "$d/boot_id" &&
umask "$umask_before" &&
cd -- "$cwd" || exit 4
setsid /bin/sh "$d/wrapper.sh" "$d" </dev/null >/dev/null 2>"$d/wrapper.log" &
i=0
while [ ! -e "$d/pgid" ]; do
  if [ $i -ge %(start_polls)d ]; then
    echo "the command did not start; see $d/wrapper.log" >&2; exit 4
  fi
  sleep %(interval)s; i=$((i + 1))
done
echo MQI_STARTED
"""

_POLL = (
    r"""d=%(run_dir)s
n=%(tail_bytes)d
"""
    + _PROC_FUNCTIONS
    + r"""
if [ ! -d "$d" ]; then echo "state missing"; exit 0; fi
pgid=$(cat "$d/pgid" 2>/dev/null)
alive=0
if [ -e "$d/exit_code" ]; then :  # ended: its exit code decides, skip the /proc scan below
elif wrapper_alive; then alive=1
elif [ -n "$pgid" ] && same_boot && group_alive; then alive=1
fi
# read the exit code only after the liveness check: the wrapper writes it just before it ends
echo "alive $alive"
echo "exit_code $(cat "$d/exit_code" 2>/dev/null)"
echo "pgid $pgid"
if [ -e "$d/kill_requested" ]; then echo "kill_requested 1"; fi
for s in stdout stderr; do
  echo "${s}_size $(wc -c < "$d/$s" 2>/dev/null || echo 0)"
  echo "${s}_tail $(tail -c "$n" "$d/$s" 2>/dev/null | base64 | tr -d '\n')"
done
"""
)

_KILL = (
    r"""d=%(run_dir)s
"""
    + _PROC_FUNCTIONS
    + r"""
if [ ! -d "$d" ]; then echo "missing"; exit 0; fi
: > "$d/kill_requested"
pgid=$(cat "$d/pgid" 2>/dev/null)
if [ -z "$pgid" ] || ! same_boot || ! group_alive; then echo "gone"; exit 0; fi
kill -TERM "-$pgid" 2>/dev/null
i=0
while group_alive && [ $i -lt %(grace_polls)d ]; do sleep %(interval)s; i=$((i + 1)); done
if group_alive; then
  kill -KILL "-$pgid" 2>/dev/null
  i=0
  while group_alive && [ $i -lt %(kill_polls)d ]; do sleep %(interval)s; i=$((i + 1)); done
  if group_alive; then echo "processes of group $pgid survived SIGKILL" >&2; exit 5; fi
  echo "killed"
else
  echo "terminated"
fi
# let the wrapper record the exit code, so that a poll right after this sees it
i=0
while [ ! -e "$d/exit_code" ] && wrapper_alive && [ $i -lt %(kill_polls)d ]; do
  sleep %(interval)s; i=$((i + 1))
done
"""
)

# Blocks until the run's exit code is written or ``limit`` seconds pass.  GNU tail's --pid
# watches the command's first process (pgid) with one kill(2) every 0.1 s, no process
# started per look; the wrapper, blocked in wait, reaps it at once (a waited-for wrapper
# could stay a zombie, alive to kill(2), under an init that reaps late) and writes the exit
# code right after.  Where tail has no --pid or there is no timeout(1) (they fail at once,
# not with timeout's 124), a loop of one-second sleeps does the waiting.
_WAIT = (
    r"""d=%(run_dir)s
limit=%(limit)d
"""
    + _PROC_FUNCTIONS
    + r"""
if [ ! -e "$d/exit_code" ] && wrapper_alive; then
  pgid=$(cat "$d/pgid" 2>/dev/null)
  timeout "$limit" tail --pid="$pgid" -s 0.1 -f /dev/null >/dev/null 2>&1
  waited=$?
  i=0
  while [ ! -e "$d/exit_code" ] && wrapper_alive && [ $i -lt 20 ]; do
    sleep 0.05; i=$((i + 1))
  done
  if [ $waited -ne 124 ]; then
    i=0
    while [ ! -e "$d/exit_code" ] && wrapper_alive && [ $i -lt "$limit" ]; do
      sleep 1; i=$((i + 1))
    done
  fi
fi
if [ -e "$d/exit_code" ]; then echo ended; else echo waiting; fi
"""
)

_READ = r"""f=%(path)s
echo "size $(wc -c < "$f" 2>/dev/null || echo 0)"
tail -c +%(start)d "$f" 2>/dev/null | head -c %(max_bytes)d | base64 | tr -d '\n'
echo
"""


class RunState(StrEnum):
    MISSING = "missing"  # no run_dir: never started
    RUNNING = "running"
    EXITED = "exited"
    VANISHED = "vanished"  # no exit code and nothing left running: killed -9 or host rebooted


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    exit_code: int | None = None
    pgid: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_size: int = 0
    stderr_size: int = 0
    kill_requested: bool = False


@dataclass(frozen=True)
class OutputChunk:
    """Complete lines of output from ``offset``; pass ``next_offset`` to the next call."""

    lines: list[str]
    next_offset: int
    size: int  # of the whole output file now


def start_detached(
    transport: Transport, run_dir: str, cwd: str, command: str, env: dict[str, str]
) -> bool:
    """Start ``command`` in ``cwd`` unless ``run_dir`` exists; True if it was started now.

    False means an earlier call started it (whatever happened to it since): poll it, do not
    start it again. Raises a permanent :class:`TransportError` if ``cwd`` is missing or the
    run folder cannot be made; a start that fails after taking the lock leaves a run that
    :func:`poll` reports as vanished.
    """
    _check_path(run_dir, transport)
    _check_path(cwd, transport)
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    exports = "\n".join(f"  export {name}={shlex.quote(value)}" for name, value in env.items())
    script = _START % {
        "run_dir": shlex.quote(run_dir),
        "cwd": shlex.quote(cwd),
        "parent": shlex.quote(posixpath.dirname(run_dir.rstrip("/"))),
        "command": shlex.quote(command),
        "wrapper": shlex.quote(_WRAPPER % {"exports": exports or "  :"}),
        "start_polls": math.ceil(START_WAIT_SEC / START_POLL_INTERVAL_SEC),
        "interval": START_POLL_INTERVAL_SEC,
    }
    result = transport.run(script, timeout=COMMAND_TIMEOUT_SEC + START_WAIT_SEC)
    marker = result.stdout.strip()
    if result.ok and marker == "MQI_STARTED":
        return True
    if result.ok and marker == "MQI_ALREADY_STARTED":
        return False
    raise _failed(transport, result, f"start {command[:200]!r} in {run_dir!r}")


def poll(transport: Transport, run_dir: str, tail_bytes: int = 4096) -> RunStatus:
    """The state of a run and the last ``tail_bytes`` of its output."""
    _check_path(run_dir, transport)
    script = _POLL % {"run_dir": shlex.quote(run_dir), "tail_bytes": tail_bytes}
    result = transport.run(script, timeout=COMMAND_TIMEOUT_SEC)
    if not result.ok:
        raise _failed(transport, result, f"poll {run_dir!r}")
    fields = dict(line.partition(" ")[::2] for line in result.stdout.splitlines())
    if fields.get("state") == "missing":
        return RunStatus(state=RunState.MISSING)
    exit_code = int(fields["exit_code"]) if fields.get("exit_code") else None
    if exit_code is not None:
        state = RunState.EXITED
    elif fields.get("alive") == "1":
        state = RunState.RUNNING
    else:
        state = RunState.VANISHED
    return RunStatus(
        state=state,
        exit_code=exit_code,
        pgid=int(fields["pgid"]) if fields.get("pgid") else None,
        stdout_tail=_decode(fields.get("stdout_tail", "")),
        stderr_tail=_decode(fields.get("stderr_tail", "")),
        stdout_size=int(fields.get("stdout_size") or 0),
        stderr_size=int(fields.get("stderr_size") or 0),
        kill_requested=fields.get("kill_requested") == "1",
    )


def kill_group(transport: Transport, run_dir: str, grace_sec: float = 5) -> bool:
    """SIGTERM the run's whole process group, SIGKILL it after ``grace_sec``; wait until gone.

    True if something was running. Safe to repeat. Raises (transient) if processes survive
    SIGKILL, e.g. stuck in the kernel on a hung GPU or file system.
    """
    _check_path(run_dir, transport)
    polls = {"interval": POLL_INTERVAL_SEC}
    script = _KILL % {
        "run_dir": shlex.quote(run_dir),
        "grace_polls": math.ceil(grace_sec / POLL_INTERVAL_SEC),
        "kill_polls": math.ceil(5 / POLL_INTERVAL_SEC),
        **polls,
    }
    result = transport.run(script, timeout=COMMAND_TIMEOUT_SEC + grace_sec + 10)
    if result.exit_code == 5:
        raise TransportError(
            f"{transport.description}: {result.stderr.strip()} ({run_dir}); "
            "the host may need attention; will retry",
            permanent=False,
        )
    if not result.ok:
        raise _failed(transport, result, f"kill the run in {run_dir!r}")
    return result.stdout.strip() in ("terminated", "killed")


def wait_for_end(transport: Transport, run_dir: str, limit_sec: int) -> bool:
    """Block until the run's command has ended (True) or about ``limit_sec`` have passed, or
    the command is gone without an exit code (False: only a :func:`poll` tells which)."""
    _check_path(run_dir, transport)
    script = _WAIT % {"run_dir": shlex.quote(run_dir), "limit": limit_sec}
    result = transport.run(script, timeout=limit_sec + COMMAND_TIMEOUT_SEC)
    if not result.ok:
        raise _failed(transport, result, f"wait for the end of {run_dir!r}")
    return result.stdout.strip() == "ended"


def read_new_output(
    transport: Transport,
    run_dir: str,
    offset: int,
    *,
    stream: str = "stdout",
    max_bytes: int = 1024 * 1024,
) -> OutputChunk:
    """The complete lines written to ``stream`` since byte ``offset``.

    A line still being written is left for the next call (its start is not skipped); a
    single line longer than ``max_bytes`` is returned in pieces so progress never stalls.
    """
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
    _check_path(run_dir, transport)
    script = _READ % {
        "path": shlex.quote(posixpath.join(run_dir, stream)),
        "start": offset + 1,
        "max_bytes": max_bytes,
    }
    result = transport.run(script, timeout=COMMAND_TIMEOUT_SEC)
    if not result.ok:
        raise _failed(transport, result, f"read {stream} of {run_dir!r}")
    header, _, encoded = result.stdout.partition("\n")
    size = int(header.removeprefix("size ").strip() or 0)
    data = base64.b64decode(encoded.strip())
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) >= max_bytes:
        end = len(data)
    text = data[:end].decode("utf-8", "replace")
    return OutputChunk(lines=text.splitlines(), next_offset=offset + end, size=size)


def _check_path(path: str, transport: Transport) -> None:
    if not posixpath.isabs(path) or ".." in path.split("/"):
        raise TransportError(
            f"{transport.description}: {path!r} must be an absolute path without '..'",
            permanent=True,
        )


def _decode(encoded: str) -> str:
    return base64.b64decode(encoded).decode("utf-8", "replace")


def _failed(transport: Transport, result: CommandResult, action: str) -> TransportError:
    # exit codes 3/4 come from our scripts (missing folder, cannot write): fix first
    permanent = result.exit_code in (3, 4, 127)
    return TransportError(
        f"{transport.description}: cannot {action}: exit {result.exit_code}: "
        f"{result.stderr.strip()[:500]}" + ("" if permanent else "; will retry"),
        permanent=permanent,
    )
