"""Where the conductor's work on a case goes: ``.venv/bin/python -m bench.profile_case``.

The ``ceiling`` benchmark's workload in this process, without Dramatiq's consumer: N
``new_case_found`` handled by the conductor actor's function, then every command it
enqueued answered with its success, phase by phase, until every case is COMPLETED (five
transitions each).  Prints the SQL statements per case, the time per case and per
transition, and a cProfile listing of the whole drive.  Uses a database of its own
(``MQI_BENCH_DB``, default ``mqi_bench``, created and dropped, as ``bench/run`` does) and
flushes the bench's Redis database (``MQI_BENCH_REDIS``, default db 12).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from bench import infra


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_case")
    parser.add_argument("--count", type=int, default=300, help="cases (default 300)")
    parser.add_argument("--sort", default="cumulative", help="cProfile order")
    parser.add_argument("--lines", type=int, default=40, help="cProfile lines shown")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mqi-profile-"))
    infra.point_django_at_the_bench(root)
    infra.create_database()
    try:
        _profile(args.count, args.sort, args.lines)
    finally:
        from django.db import connections

        connections.close_all()
        infra.drop_database()


def _drive(count: int, first: int, profiler: cProfile.Profile | None) -> float:
    """All five transitions of ``count`` cases; seconds spent in the conductor's function."""
    from bench import ceiling
    from conductor.actors import conductor

    messages = [
        (command, {**payload, "case_id": f"c-{first + i:06d}"})
        for i, (command, payload) in enumerate(ceiling.found_messages(count))
    ]
    spent = 0.0
    while messages:
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for command, payload in messages:
            conductor(command, payload)
        if profiler is not None:
            profiler.disable()
        spent += time.perf_counter() - start
        messages = ceiling.take_commands()
    return spent


def _profile(count: int, sort: str, lines: int) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench import fixtures

    call_command("migrate", interactive=False, verbosity=0)
    infra.redis_client().flushdb()
    warmup = 20
    fixtures.gpus(count + warmup)
    with CaptureQueriesContext(connection) as queries:
        _drive(warmup, 0, None)
    print(f"SQL statements per case (all five transitions): {len(queries) / warmup:.1f}")
    profiler = cProfile.Profile()
    spent = _drive(count, warmup, profiler)
    print(f"{1000 * spent / count:.1f} ms per case, {200 * spent / count:.2f} ms per transition")
    pstats.Stats(profiler).sort_stats(sort).print_stats(lines)


if __name__ == "__main__":
    main()
