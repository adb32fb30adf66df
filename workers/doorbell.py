"""The doorbell: the end of a running command reaches the executor as it happens.

The executor follows a command with poll messages that slow down to one every few seconds,
each taken from the broker's delay queue up to a worker timeout late: on their own they
would see a command's end seconds after it, twice per case.  So while a command runs, a
thread here waits for its end on the GPU server (:func:`wait_for_end`: a remote ``tail
--pid`` on the command's wrapper, blocked in one SSH command) and, when the end comes,
sends the executor a poll message without delay.

The polls stay the truth.  A wait that fails (connection lost, the worker restarted, more
commands running than there are waiting threads) only leaves the end to the next poll, and
every poll that finds the command running arms the wait again.  The threads touch no
database; each keeps its own SSH connection per host, as worker threads do.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from mqi_site.messaging import REMOTE_EXECUTOR, Command, send
from workers.hosts import transport_for
from workers.transports.detached import wait_for_end

log = logging.getLogger(__name__)

# Commands waited for at once by one worker process; beyond this, their ends are left to
# the polls.  A GPU server runs one command per GPU.
WAITERS = 32
# A wait ends after this long even if the command runs on (a remote process is never left
# behind for long); the next poll arms a new one.
WAIT_LIMIT_SEC = 600

_lock = threading.Lock()
_waiting: set[int] = set()
_threads = ThreadPoolExecutor(max_workers=WAITERS, thread_name_prefix="mqi-doorbell")


def arm(*, host: str, run_dir: str, case_id: str, step_run_id: int) -> None:
    """Wait for the end of the command of ``step_run_id`` unless that is done already."""
    with _lock:
        if step_run_id in _waiting or len(_waiting) >= WAITERS:
            return
        _waiting.add(step_run_id)
    _threads.submit(_wait, host, run_dir, case_id, step_run_id)


def _wait(host: str, run_dir: str, case_id: str, step_run_id: int) -> None:
    try:
        if wait_for_end(transport_for(host), run_dir, WAIT_LIMIT_SEC):
            payload = {"case_id": case_id, "step_run_id": step_run_id, "doorbell": True}
            send(REMOTE_EXECUTOR, Command.POLL_COMMAND, payload)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the end to the polls
        log.debug("waiting for the end of %s on %s: %s", run_dir, host, exc)
    finally:
        with _lock:
            _waiting.discard(step_run_id)
