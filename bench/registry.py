"""Which benchmarks ``bench/run`` knows, in the order it runs them.

Each entry names a module with ``run(ctx: bench.infra.Context) -> bench.infra.Outcome``.
Adding a benchmark is a module of its own and one line here; ``bench/run --only NAME
--write`` then merges its rows into RESULTS.md without touching the others.
"""

from __future__ import annotations

BENCHMARKS: dict[str, str] = {
    "overhead": "bench.overhead",
    "busy": "bench.busy",
    "fan_out_turnaround": "bench.fan_out_turnaround",
    "fan_out_busy": "bench.fan_out_busy",
    "ceiling": "bench.ceiling",
    "idle": "bench.idle",
    "sftp": "bench.sftp",
    "scanner": "bench.scanner",
    "admin": "bench.admin_scale",
}
