"""Where one conductor transition spends its time: ``.venv/bin/python -m bench.profile_transition``.

Runs ``transitions.step_run_succeeded`` for upload outcomes in this process, on a database of its
own (``mqi_bench``, created and dropped, as ``bench/run`` does), prints the statements of
one transition, the mean time per transition, and a cProfile listing (``--profile``).
``--handoff``: simulation outcomes instead, each releasing a GPU that the transition hands
to a waiting case (``gpu_policy: execute_steps``, as in the GPU handoff benchmark).
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
    parser.add_argument("--handoff", action="store_true", help="transitions that hand a GPU on")
    parser.add_argument("--sort", default="tottime", help="cProfile order (default tottime)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mqi-profile-"))
    config = root / "config.yaml"
    policy = "execute_steps" if args.handoff else "every_step"
    sample = infra.sample_config(root, conductor__gpu_policy=policy)
    config.write_text(yaml.safe_dump(sample, sort_keys=False))
    os.environ.update(
        DATABASE_URL=infra.DATABASE_URL,
        REDIS_URL=infra.REDIS_URL,
        DJANGO_SETTINGS_MODULE="mqi_site.settings",
        MQI_CONFIG=str(config),
        MQI_LOG_LEVEL="WARNING",
    )
    infra.create_database()
    try:
        _profile(args.count, args.profile, args.handoff, args.sort)
    finally:
        from django.db import connections

        connections.close_all()
        infra.drop_database()


def _profile(count: int, profile: bool, handoff: bool, sort: str) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench import fixtures
    from conductor import transitions
    from mqi_site.messaging import Command

    call_command("migrate", interactive=False, verbosity=0)
    warmup = 50
    step, command = "upload_case_files", Command.CASE_UPLOAD_COMPLETED
    if handoff:
        step, command = "run_moqui_sim", Command.EXECUTION_SUCCEEDED
        fixtures.waiting_cases(count + warmup + 1, step="run_interpreter", prefix="w")
    cases = fixtures.cases_in_flight(count + warmup + 1, step=step, prefix="p")

    def transition(case: fixtures.InFlight) -> None:
        transitions.step_run_succeeded(
            step_run_id=case.run_id,
            command=command,
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
        pstats.Stats(profiler).sort_stats(sort).print_stats(30)


if __name__ == "__main__":
    main()
