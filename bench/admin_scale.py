"""The case list page (``/admin/cases/case/``) with 100,000 cases: render time and queries.

Pages are rendered through Django's test client in the bench process (full middleware,
session login, templates), on PostgreSQL; the query count is compared with the same page
over 1,000 cases to show it does not grow with the table.
"""

from __future__ import annotations

import time

from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from bench.infra import (
    Context,
    Outcome,
    Row,
    at_most,
    median,
    percentile,
    reset_state,
    sample_config,
    use_config,
)

TOTAL = 100_000
SMALL = 1_000
LIST = "/admin/cases/case/"
# name -> (page with 100,000 cases, the same kind of page with 1,000)
PAGES = {
    "default list": (LIST, LIST),
    "a deep page": (f"{LIST}?p=500", f"{LIST}?p=5"),
    "status filter": (f"{LIST}?status__exact=FAILED", f"{LIST}?status__exact=FAILED"),
    "search": (f"{LIST}?q=QA-0424", f"{LIST}?q=QA-0999"),
}

_INSERT = """
INSERT INTO cases_case (case_id, source_path, patient_id, patient_name, plan_label,
                        treatment_machine, beam_count, beams, manifest, log_check,
                        workflow, status, workflow_step, progress,
                        priority, host, error_kind, error_message, created_at, updated_at,
                        finished_at)
SELECT 'QA-' || lpad(i::text, 6, '0'),
       '/data/incoming/QA-' || lpad(i::text, 6, '0'),
       'P' || lpad((i %% 9973)::text, 5, '0'),
       'PATIENT^' || (i %% 9973)::text,
       'PLAN' || (i %% 7)::text,
       'G' || (i %% 3)::text,
       2,
       '[{"number": 1, "name": "B1"}, {"number": 2, "name": "B2"}]',
       '[]',
       'ok',
       'default_qa',
       s.status,
       CASE WHEN s.status IN ('COMPLETED', 'FAILED') THEN 'download_results'
            WHEN s.status = 'NEW' THEN '' ELSE 'run_moqui_sim' END,
       CASE WHEN s.status = 'COMPLETED' THEN 100 WHEN s.status = 'NEW' THEN 0 ELSE 70 END,
       0,
       'gpu1',
       CASE WHEN s.status = 'FAILED' THEN 'permanent' ELSE '' END,
       CASE WHEN s.status = 'FAILED' THEN 'run_moqui_sim failed: exited with code 4' ELSE '' END,
       now() - (%(total)s - i) * interval '5 minutes',
       now() - (%(total)s - i) * interval '5 minutes' + interval '50 minutes',
       CASE WHEN s.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
            THEN now() - (%(total)s - i) * interval '5 minutes' + interval '50 minutes' END
FROM generate_series(%(first)s, %(last)s) AS i,
LATERAL (SELECT CASE
    WHEN i > %(total)s - 8 THEN 'PROCESSING'
    WHEN i > %(total)s - 40 THEN 'PENDING_RESOURCE'
    WHEN i %% 50 = 0 THEN 'FAILED'
    WHEN i %% 333 = 0 THEN 'CANCELLED'
    ELSE 'COMPLETED' END AS status) AS s
"""


def _insert_cases(first: int, last: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_INSERT, {"first": first, "last": last, "total": TOTAL})
        # the running cases' simulations hold GPUs, shown in the list through the step run
        cursor.execute(
            "INSERT INTO cases_workflowstep (case_id, name, type, beam_number, beam_name, "
            "attempt, status, host, command, created_at, dispatched_at, started_at, "
            "stdout_tail, stderr_tail, error_kind, error_message) "
            "SELECT id, 'run_moqui_sim', 'execute', 0, '', 1, 'RUNNING', 'gpu1', '', now(), "
            "now(), now(), '', '', '', '' FROM cases_case WHERE status = 'PROCESSING' "
            "AND NOT EXISTS (SELECT 1 FROM cases_workflowstep s WHERE s.case_id = cases_case.id)"
        )
        cursor.execute(
            "INSERT INTO gpus_gpuresource (host, index, uuid, name, status, step_run_id, "
            "reserved_at, drain_requested, foreign_processes) "
            "SELECT 'gpu1', row_number() OVER () - 1, '', 'A100', 'RESERVED', s.id, now(), "
            "false, 0 FROM cases_workflowstep s WHERE s.status = 'RUNNING' "
            "AND s.id NOT IN (SELECT step_run_id FROM gpus_gpuresource "
            "WHERE step_run_id IS NOT NULL)"
        )
        cursor.execute("ANALYZE cases_case")
        cursor.execute("ANALYZE gpus_gpuresource")


def _client() -> Client:
    user = get_user_model().objects.create_superuser("bench", "bench@example.org", "bench-pw")
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return client


def _render(client: Client, url: str) -> tuple[float, int]:
    with CaptureQueriesContext(connection) as queries:
        start = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise AssertionError(f"{url}: HTTP {response.status_code}")
    return elapsed, len(queries)


def _measure(client: Client, url: str, repeats: int) -> tuple[list[float], int]:
    _render(client, url)  # warm: templates, plans
    times, counts = [], set()
    for _ in range(repeats):
        elapsed, count = _render(client, url)
        times.append(elapsed)
        counts.add(count)
    return times, max(counts)


def run(ctx: Context) -> Outcome:
    out = Outcome()
    reset_state()
    use_config(ctx.root / "config-admin.yaml", sample_config(ctx.root))
    get_user_model().objects.filter(username="bench").delete()
    client = _client()
    repeats = ctx.options.scaled(30, 8)
    # the newest 1,000 first (same running/waiting cases), then the 99,000 older ones
    _insert_cases(TOTAL - SMALL + 1, TOTAL)
    small_counts = {name: _measure(client, small, 3)[1] for name, (_, small) in PAGES.items()}
    _insert_cases(1, TOTAL - SMALL)
    for name, (url, _) in PAGES.items():
        times, count = _measure(client, url, repeats)
        p95 = percentile(times, 95)
        target = name == "default list"
        out.rows.append(
            Row(
                "admin scale",
                f"{name}, {TOTAL:,} cases, p95",
                p95,
                "ms",
                "≤ 300" if target else "",
                at_most(p95, 300) if target else None,
                f"p50 {median(times):.0f} ms, n={len(times)}; {count} queries "
                f"({small_counts[name]} with {SMALL:,} cases)",
            )
        )
        if target:
            out.rows.append(
                Row(
                    "admin scale",
                    f"{name}, queries with {TOTAL:,} cases",
                    count,
                    "queries",
                    "constant",
                    count <= small_counts[name],
                    f"{small_counts[name]} with {SMALL:,} cases (small tables get an exact "
                    "COUNT(*), big ones the planner's estimate)",
                )
            )
    out.notes.append(
        f"Admin scale: {TOTAL:,} cases written with one SQL statement (mostly completed, "
        "every 50th failed, 32 waiting, 8 running with a GPU), `ANALYZE`d; pages rendered by "
        "Django's test client in the bench process as a logged-in superuser (all middleware, "
        f"session, templates), {repeats} times each after one warm-up. The query count is "
        f"compared with the same page when the table held the newest {SMALL:,} cases only. "
        "Only the default list has a target; deep pages, a status filter and a search are "
        "shown for comparison."
    )
    return out
