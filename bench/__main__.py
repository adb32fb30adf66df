"""``python -m bench``: every benchmark, a table on stdout, the figures in bench/RESULTS.md.

Use ``bench/run`` (it installs and starts what is needed first).  ``--only overhead,idle``
runs some benchmarks (and, with ``--write``, merges their rows into RESULTS.md, keeping the
others); ``--quick`` takes fewer samples, for trying the bench itself.  The benchmarks are
listed in ``bench/registry.py``.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import infra
from bench.registry import BENCHMARKS


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="fewer samples (not for RESULTS.md)")
    parser.add_argument("--write", action="store_true", help="write RESULTS.md after --only")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    return parser.parse_args(argv)


def _setup_django(root: Path) -> None:
    infra.point_django_at_the_bench(root)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    options = infra.Options(quick=args.quick, only=only)
    root = Path(tempfile.mkdtemp(prefix="mqi-bench-"))
    from bench import report

    machine = report.machine_facts()
    started = time.monotonic()
    infra.create_database()
    context = infra.Context(root, options, infra.Processes(root / "logs"))
    results: list[tuple[str, infra.Outcome | None, str]] = []
    try:
        _setup_django(root)
        machine["software"] = report.software_versions()
        for name, module in BENCHMARKS.items():
            if only and name not in only:
                continue
            print(f"== {name}", file=sys.stderr, flush=True)
            begun = time.monotonic()
            try:
                outcome = importlib.import_module(module).run(context)
                results.append((name, outcome, ""))
            except Exception as exc:  # noqa: BLE001 (one broken benchmark must not hide the rest)
                traceback.print_exc()
                results.append((name, None, f"{type(exc).__name__}: {exc}"))
            finally:
                context.processes.stop_all()
            print(f"   {time.monotonic() - begun:.0f} s", file=sys.stderr, flush=True)
    finally:
        context.close()
        from django.db import connections

        connections.close_all()
        infra.drop_database()
        if args.keep:
            print(f"work folder kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    machine["duration"] = f"{time.monotonic() - started:.0f} s"
    machine["load_end"] = report.load_average()
    machine["options"] = " ".join(argv) or "(defaults)"
    machine["worker_timeout_ms"] = str(options.worker_timeout_ms)
    print(report.table(results))
    if (not only and not args.quick) or args.write:
        path = report.write_results(results, machine)
        print(f"\nwritten: {path}")
    failed = [name for name, outcome, _ in results if outcome is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
