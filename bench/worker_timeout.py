"""What ``dramatiq_worker_timeout`` costs when idle and adds to each message hop.

Dramatiq's Redis consumer that finds its queue empty sleeps, backing off up to the worker
timeout, before it looks again; idle worker threads wake at the same pace, and a delayed
message (retry back-off, the executor's next poll) is moved to its queue on one of those
wake-ups.  So the timeout trades idle CPU against the latency of a message that finds its
consumer idle.  For each timeout this starts the production's two worker processes as
``docker-compose.yml`` runs them (``manage.py rundramatiq``, the conductor and the workers
shape) on Redis, then measures

- the CPU (% of one core) of both process groups over a stretch with nothing to do;
- the hop: from enqueue until a worker thread takes the message, one at a time, each sent
  after a pause long enough for the consumer to have backed off fully (as between real
  outcomes, which are minutes apart);
- how late a message sent with a delay is taken, past its due time.

The worker processes run ``bench.settings_worker_timeout``: the project's settings with
:class:`PingStamp` first in the middleware, which notes the moment a ping reaches a worker
thread and skips it, so no actor runs and no database is touched.

    .venv/bin/python -m bench.worker_timeout [--timeouts 100,250,500,1000] [--samples 30]
        [--redis redis://127.0.0.1:6379/9] [--private-redis]

``--private-redis`` starts a ``redis-server`` of its own on a free port and reports its CPU
too (the polls cost Redis as well); the shared server's CPU belongs to everyone using it.
Only the Redis database given is written to, and it is flushed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, SkipMessage

REPO = Path(__file__).resolve().parent.parent
PING_OPTION = "mqi_bench_ping"
STAMPS_KEY = "mqi-bench:worker-timeout:stamps"
DEFAULT_REDIS = "redis://127.0.0.1:6379/9"

# The production's worker processes (docker-compose.yml): threads, queues, and the actor
# whose queue is pinged.
ROLES = {
    "conductor": (4, ["conductor_queue", "notifications_queue"], "conductor"),
    "workers": (
        8,
        ["file_transfer_queue", "remote_executor_queue", "scanner_queue"],
        "file_transfer",
    ),
}
QUEUE_OF = {"conductor": "conductor_queue", "file_transfer": "file_transfer_queue"}


class PingStamp(Middleware):
    """In the measured workers: note when a bench ping reaches a worker thread, skip it."""

    def __init__(self) -> None:
        self.client: redis.Redis | None = None

    def before_process_message(self, broker, message) -> None:
        if not message.options.get(PING_OPTION):
            return
        if self.client is None:
            self.client = redis.Redis.from_url(os.environ["REDIS_URL"])
        self.client.rpush(STAMPS_KEY, json.dumps([message.message_id, time.time()]))
        raise SkipMessage("a bench ping")


# --- processes --------------------------------------------------------------------------


def cpu_seconds_of_group(pgid: int) -> float:
    """User + system CPU of every live process in the process group."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
    return total / ticks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[tuple[str, int]]:
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    with (directory / "redis.log").open("ab") as log:
        process = subprocess.Popen(
            [*command, "--appendonly", "no", "--dir", str(directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def start_role(role: str, timeout_ms: int, redis_url: str, root: Path) -> subprocess.Popen:
    threads, queues, _ = ROLES[role]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "REDIS_URL", "MQI_", "DJANGO_", "dramatiq_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings_worker_timeout",
        REDIS_URL=redis_url,
        MQI_DATA_DIR=str(root / "data"),  # a SQLite file nobody uses: pings touch no table
        dramatiq_worker_timeout=str(timeout_ms),
        PYTHONUNBUFFERED="1",
    )
    argv = [sys.executable, "manage.py", "rundramatiq", "--processes", "1"]
    argv += ["--threads", str(threads), "--queues", *queues]
    with (root / f"{role}-{timeout_ms}ms.log").open("ab") as log:
        return subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: its CPU and its stop cover every child
        )


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # dramatiq's worker may outlive its parent
        os.killpg(process.pid, signal.SIGKILL)


# --- measuring ----------------------------------------------------------------------------


class Pinger:
    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.broker = RedisBroker(url=redis_url)

    def ping(self, actor: str, *, delay_ms: int = 0, timeout_sec: float = 60) -> float:
        """Seconds from enqueue (plus ``delay_ms``) until a worker thread took the ping."""
        message = Message(
            queue_name=QUEUE_OF[actor],
            actor_name=actor,
            args=("bench_ping", {}),
            kwargs={},
            options={PING_OPTION: True},
        )
        sent = time.time()
        self.broker.enqueue(message, delay=delay_ms or None)
        popped = self.client.blpop([STAMPS_KEY], timeout=timeout_sec)
        if popped is None:
            raise TimeoutError(f"no worker took a ping to {actor} within {timeout_sec:g} s")
        message_id, taken = json.loads(popped[1])
        if message_id != message.message_id:
            raise RuntimeError(f"a stale ping {message_id} came back (is db in use?)")
        return taken - sent - delay_ms / 1000

    def close(self) -> None:
        self.broker.close()


@dataclass
class Figures:
    timeout_ms: int
    idle_cpu: dict[str, float]
    redis_cpu: float | None
    hops_ms: list[float]
    late_ms: list[float]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def idle_pause(timeout_ms: int) -> None:
    # Long enough for the consumer's back-off to reach the timeout: it doubles from 5 ms,
    # so it gets there within about twice the timeout.
    time.sleep(max(0.5, random.uniform(2, 3) * timeout_ms / 1000))  # noqa: S311 (timing)


def measure(
    timeout_ms: int,
    pinger: Pinger,
    redis_url: str,
    redis_pid: int | None,
    args: argparse.Namespace,
    root: Path,
) -> Figures:
    processes = {role: start_role(role, timeout_ms, redis_url, root) for role in ROLES}
    try:
        for _, _, actor in ROLES.values():  # both are up and taking messages
            pinger.ping(actor, timeout_sec=120)
        idle_pause(timeout_ms)
        before = {role: cpu_seconds_of_group(p.pid) for role, p in processes.items()}
        redis_before = cpu_seconds_of_group(redis_pid) if redis_pid else 0.0
        started = time.monotonic()
        time.sleep(args.idle_seconds)
        elapsed = time.monotonic() - started
        idle = {
            role: 100 * (cpu_seconds_of_group(p.pid) - before[role]) / elapsed
            for role, p in processes.items()
        }
        redis_cpu = (
            100 * (cpu_seconds_of_group(redis_pid) - redis_before) / elapsed if redis_pid else None
        )
        actors = [actor for _, _, actor in ROLES.values()]
        hops, late = [], []
        for n in range(args.samples):
            idle_pause(timeout_ms)
            hops.append(1000 * pinger.ping(actors[n % len(actors)]))
        for n in range(args.delayed_samples):
            idle_pause(timeout_ms)
            late.append(1000 * pinger.ping(actors[n % len(actors)], delay_ms=args.delay_ms))
    finally:
        for process in processes.values():
            stop(process)
    return Figures(timeout_ms, idle, redis_cpu, hops, late)


def table(rows: list[Figures], delay_ms: int) -> str:
    with_redis = rows[0].redis_cpu is not None
    head = "| worker timeout | idle CPU conductor | idle CPU workers |"
    head += " idle CPU redis-server |" if with_redis else ""
    head += f" idle CPU total | hop p50 | hop p95 | late p50 ({delay_ms} ms delay) | late p95 |"
    lines = [head, "|" + "---|" * head.count(" |")]
    for f in rows:
        total = sum(f.idle_cpu.values()) + (f.redis_cpu or 0)
        line = f"| {f.timeout_ms} ms | {f.idle_cpu['conductor']:.2f} % | "
        line += f"{f.idle_cpu['workers']:.2f} % | "
        line += f"{f.redis_cpu:.2f} % | " if with_redis else ""
        line += f"{total:.2f} % | {statistics.median(f.hops_ms):.0f} ms | {p95(f.hops_ms):.0f} ms"
        line += f" | {statistics.median(f.late_ms):.0f} ms | {p95(f.late_ms):.0f} ms |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeouts", default="100,250,500,1000", help="ms, comma-separated")
    parser.add_argument("--samples", type=int, default=30, help="hops per timeout")
    parser.add_argument("--delayed-samples", type=int, default=12, help="delayed messages")
    parser.add_argument("--delay-ms", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--redis", default=os.environ.get("MQI_BENCH_REDIS", DEFAULT_REDIS))
    parser.add_argument("--private-redis", action="store_true")
    args = parser.parse_args()
    timeouts = [int(value) for value in args.timeouts.split(",")]

    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mqi-wt-")))
        (root / "data").mkdir()
        redis_url, redis_pid = args.redis, None
        if args.private_redis:
            redis_url, redis_pid = stack.enter_context(private_redis(root))
        client = redis.Redis.from_url(redis_url)
        client.flushdb()  # this database only
        stack.callback(client.flushdb)
        pinger = Pinger(redis_url)
        stack.callback(pinger.close)
        baseline = ""
        if redis_pid:
            before = cpu_seconds_of_group(redis_pid)
            time.sleep(args.idle_seconds)
            alone = 100 * (cpu_seconds_of_group(redis_pid) - before) / args.idle_seconds
            baseline = f" redis-server with no worker: {alone:.2f} %."
        rows = []
        for timeout_ms in timeouts:
            print(f"worker timeout {timeout_ms} ms ...", file=sys.stderr, flush=True)
            rows.append(measure(timeout_ms, pinger, redis_url, redis_pid, args, root))
            client.flushdb()
        print(table(rows, args.delay_ms))
        n = f"n={args.samples} hops, {args.delayed_samples} delayed"
        print(f"\nIdle CPU over {args.idle_seconds:g} s, % of one core; {n} per timeout.{baseline}")


if __name__ == "__main__":
    main()
