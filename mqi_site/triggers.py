"""Periodic triggers and file events, turned into messages.

The scheduler only *sends* ticks (``scan``, ``reconcile``, ``sync_gpus``); the worker that
owns each job does it.  Exactly one scheduler is active at a time, even when several run
(for availability): the leader holds a lock — in Redis when the Redis broker is used
(shared by every host), else a file lock (the embedded single-machine run).  A standby
scheduler keeps trying and takes over within one lock lifetime when the leader dies.

File events from the watched directory (watchdog, inotify on Linux) trigger a scan of
just the folder concerned, so a ready marker is noticed at once; the periodic full scan
is the fallback for missed events and for the quiet-period rule.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Protocol

import redis
from apscheduler.schedulers.background import BackgroundScheduler
from django.conf import settings
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from mqi_site.config import Config
from mqi_site.messaging import CONDUCTOR, GPU_DISCOVERY, SCANNER, Command, send

log = logging.getLogger(__name__)

LOCK_NAME = "mqi:scheduler-leader"
LOCK_TTL_SEC = 15
# Events come in bursts while a folder is copied: the first of a burst starts a timer, and
# the folders named until it fires go in one scan message.  (A timer per burst, not a job
# every 0.2 s: an idle scheduler wakes for nothing.)
FOLDER_EVENT_BATCH_SEC = 0.2
# The events that can make a case folder complete.  Not "opened" and "closed without
# writing": every directory listing causes those, and the recursive watch lists each
# folder when it sets up, so with a few thousand case folders in the watched directory
# they overflow the kernel's event queue; watchdog then lists everything again, and the
# loop loses every event (measured with 5,000 folders; bench/RESULTS.md).
FOLDER_EVENTS = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    DirModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]


class LeaderLock(Protocol):
    def hold(self) -> bool:
        """Take or keep the lead; True while this process is the leader."""

    def release(self) -> None: ...


class RedisLeaderLock:
    """A Redis key with a TTL, renewed by the holder; lost if the holder stops renewing."""

    _RENEW = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    )

    def __init__(self, url: str, ttl_sec: float = LOCK_TTL_SEC) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.token = uuid.uuid4().hex
        self.ttl_ms = int(ttl_sec * 1000)
        self.renew = self.client.register_script(self._RENEW)

    def hold(self) -> bool:
        try:
            if self.renew(keys=[LOCK_NAME], args=[self.token, self.ttl_ms]):
                return True
            return bool(self.client.set(LOCK_NAME, self.token, nx=True, px=self.ttl_ms))
        except redis.RedisError as exc:
            log.warning("scheduler: cannot reach Redis for the leader lock (%s); standing by", exc)
            return False

    def release(self) -> None:
        try:
            if self.client.get(LOCK_NAME) == self.token.encode():
                self.client.delete(LOCK_NAME)
        except redis.RedisError:
            log.warning("scheduler: could not release the leader lock; it expires by itself")


class FileLeaderLock:
    """``flock`` on a file in the data directory: one leader per machine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def hold(self) -> bool:
        if self.fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def leader_lock() -> LeaderLock:
    if settings.REDIS_URL:
        return RedisLeaderLock(settings.REDIS_URL)
    return FileLeaderLock(settings.DATA_DIR / "scheduler.lock")


class _FolderEvents(FileSystemEventHandler):
    """Maps file events under the watch directory to the case folder they concern."""

    def __init__(self, watch_dir: Path, on_folder) -> None:
        self.watch_dir = watch_dir
        self.on_folder = on_folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = Path(os.fsdecode(raw)) if raw else None
            if path is None:
                continue
            try:
                relative = path.relative_to(self.watch_dir)
            except ValueError:
                continue
            if relative.parts and not relative.parts[0].startswith("."):
                self.on_folder(relative.parts[0])


class Triggers:
    """The scheduler: periodic ticks and file events, sent while this process leads."""

    def __init__(self, config: Config, lock: LeaderLock | None = None) -> None:
        self.config = config
        self.lock = lock or leader_lock()
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        )
        self.observer: Observer | None = None
        self._leading = False
        self._pending_folders: set[str] = set()
        self._pending_lock = threading.Lock()

    # -- ticks -------------------------------------------------------------------------

    def _lead(self) -> bool:
        leading = self.lock.hold()
        if leading != self._leading:
            log.info("scheduler: %s", "now leading" if leading else "standing by")
            self._leading = leading
            if leading:
                # A new leader reconciles at once: the previous one may have died mid-pass.
                send(CONDUCTOR, Command.RECONCILE, {})
        return leading

    def tick_scan(self) -> None:
        if self._lead():
            send(SCANNER, Command.SCAN, {})

    def tick_reconcile(self) -> None:
        if self._lead():
            send(CONDUCTOR, Command.RECONCILE, {})

    def tick_gpus(self) -> None:
        if self._lead():
            send(GPU_DISCOVERY, Command.SYNC_GPUS, {})

    def tick_probe(self) -> None:
        # cheap when every server is up: the worker only reads which are down
        if self._lead():
            send(GPU_DISCOVERY, Command.PROBE_HOSTS, {})

    def _flush_folder_events(self) -> None:
        with self._pending_lock:
            folders, self._pending_folders = sorted(self._pending_folders), set()
        if folders and self._lead():
            send(SCANNER, Command.SCAN, {"folders": folders})

    def _folder_changed(self, name: str) -> None:
        with self._pending_lock:
            first = not self._pending_folders
            self._pending_folders.add(name)
        if first:
            timer = threading.Timer(FOLDER_EVENT_BATCH_SEC, self._flush_folder_events)
            timer.daemon = True
            timer.start()

    # -- life cycle --------------------------------------------------------------------

    def start(self, *, watch: bool = True) -> None:
        cfg = self.config
        self.scheduler.add_job(self.tick_scan, "interval", seconds=cfg.scanner.scan_interval_sec)
        self.scheduler.add_job(
            self.tick_reconcile, "interval", seconds=cfg.conductor.reconcile_interval_sec
        )
        self.scheduler.add_job(self.tick_gpus, "interval", seconds=cfg.gpus.discovery_interval_sec)
        self.scheduler.add_job(
            self.tick_probe, "interval", seconds=cfg.conductor.host_probe_interval_sec
        )
        # Renew the lock well within its lifetime even when every interval is long.
        self.scheduler.add_job(self._lead, "interval", seconds=LOCK_TTL_SEC / 3)
        if watch and cfg.scanner.use_file_events:
            watch_dir = Path(cfg.scanner.watch_dir)
            watch_dir.mkdir(parents=True, exist_ok=True)
            self.observer = Observer()
            self.observer.schedule(
                _FolderEvents(watch_dir, self._folder_changed),
                str(watch_dir),
                recursive=True,
                event_filter=FOLDER_EVENTS,
            )
            self.observer.start()
        self.scheduler.start()
        if self._lead():
            send(GPU_DISCOVERY, Command.SYNC_GPUS, {})
            send(SCANNER, Command.SCAN, {})

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
        self.lock.release()
