"""Where one conductor transition spends its time: ``.venv/bin/python -m bench.profile_transition``.

Runs ``state.step_run_succeeded`` for upload outcomes in this process, on a database of its
own (``mqi_bench``, created and dropped, as ``bench/run`` does), prints the statements of
one transition, the mean time per transition, and a cProfile listing (``--profile``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import yaml

from bench import infra


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_transition")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--profile", action="store_true", help="print a cProfile listing")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mqi-profile-"))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(infra.sample_config(root), sort_keys=False))
    os.environ.update(
        DATABASE_URL=infra.DATABASE_URL,
        REDIS_URL=infra.REDIS_URL,
        DJANGO_SETTINGS_MODULE="mqi_site.settings",
        MQI_CONFIG=str(config),
        MQI_LOG_LEVEL="WARNING",
    )
    infra.create_database()
    try:
        _profile(args.count, args.profile)
    finally:
        from django.db import connections

        connections.close_all()
        infra.drop_database()


def _profile(count: int, profile: bool) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench import fixtures
    from conductor import state
    from mqi_site.messaging import Command

    call_command("migrate", interactive=False, verbosity=0)
    warmup = 50
    cases = fixtures.cases_in_flight(count + warmup + 1, step="upload_case_files", prefix="p")

    def transition(case: fixtures.InFlight) -> None:
        state.step_run_succeeded(
            step_run_id=case.run_id,
            command=Command.CASE_UPLOAD_COMPLETED,
            outcome={"case_id": case.case_id, "step_run_id": case.run_id},
        )

    for case in cases[:warmup]:
        transition(case)
    with CaptureQueriesContext(connection) as queries:
        transition(cases[warmup])
    print(f"statements of one transition ({len(queries)}):")
    for query in queries.captured_queries:
        print(f"  {query['sql'][:110]}")
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for case in cases[warmup + 1 :]:
        transition(case)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - start
    print(f"{elapsed * 1000 / count:.2f} ms per transition over {count}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
            int(os.environ.get("N", "25"))
        )


if __name__ == "__main__":
    main()
