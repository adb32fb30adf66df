"""The doorbell: the end of a running command reaches the executor as it happens.

The executor follows a command with poll messages that slow down to one every few seconds,
each taken from the broker's delay queue up to a worker timeout late: on their own they
would see a command's end seconds after it, twice per case.  So while a command runs, a
thread here waits for its end on the GPU server (:func:`wait_for_end`: a remote ``tail
--pid`` on the command, blocked in one SSH command) and, when the end comes, calls the
executor back in that thread.

The polls stay the truth.  A wait that fails (connection lost, the worker restarted, more
commands running than there are waiting threads) only leaves the end to the next poll, and
every poll that finds the command running arms the wait again.  The threads are daemons:
a worker that stops does not wait for them (the remote wait ends by itself at its limit),
and each closes the SSH connection it opened when its wait is over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from workers.hosts import transport_for
from workers.transports.detached import wait_for_end
from workers.transports.ssh import close_thread_connections

log = logging.getLogger(__name__)

# Commands waited for at once by one worker process; beyond this, their ends are left to
# the polls.  A GPU server runs one command per GPU.
WAITERS = 32
# A wait ends after this long even if the command runs on (a remote process is never left
# behind for long); the next poll arms a new one.
WAIT_LIMIT_SEC = 600

_lock = threading.Lock()
_waiting: set[int] = set()


def arm(*, key: int, host: str, run_dir: str, on_end: Callable[[], None]) -> None:
    """Call ``on_end`` when the command in ``run_dir`` on ``host`` has ended, unless a wait
    for ``key`` (its step run) is on already."""
    with _lock:
        if key in _waiting or len(_waiting) >= WAITERS:
            return
        _waiting.add(key)
    thread = threading.Thread(
        target=_wait, args=(key, host, run_dir, on_end), name=f"doorbell-{key}", daemon=True
    )
    thread.start()


def _wait(key: int, host: str, run_dir: str, on_end: Callable[[], None]) -> None:
    try:
        ended = wait_for_end(transport_for(host), run_dir, WAIT_LIMIT_SEC)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the end to the polls
        log.debug("waiting for the end of %s on %s: %s", run_dir, host, exc)
        ended = False
    try:
        if ended:
            on_end()
    except Exception:  # the polls report the end instead
        log.warning("reporting the end of %s on %s", run_dir, host, exc_info=True)
    finally:
        close_thread_connections()
        with _lock:
            _waiting.discard(key)
