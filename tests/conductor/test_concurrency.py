"""Many threads drive many cases through 4 GPUs at once on PostgreSQL.

Eight threads play both the conductor and the workers: each takes a dispatched command from
the broker's queues and reports its outcome through the conductor's functions, which reserve,
hand over and release GPUs under real row locks.  A monitor thread checks the invariants in
single-statement snapshots the whole time.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
from django.db import connection

from cases.models import Case, WorkflowStep
from conductor import transitions
from gpus.models import GPUResource
from mqi_site.messaging import QUEUES, STEP_ROUTES, Command, ErrorKind
from tests.conductor.helpers import make_gpus

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8
CASES = 120
GPUS = 4

# One statement, so one snapshot (every_step, no step fans out): a PROCESSING case not yet at
# its evaluation (which needs no GPU) whose step runs hold no GPU, or a waiting, evaluating
# or finished case whose runs hold one, a case holding two GPUs, a GPU held by a step run
# that ended, a case with two active step runs.
VIOLATIONS_SQL = """
SELECT
  (SELECT count(*) FROM cases_case c
     WHERE (c.status = 'PROCESSING' AND NOT EXISTS (
       SELECT 1 FROM cases_workflowstep e WHERE e.case_id = c.id AND e.type = 'evaluate'
       AND e.status IN ('PENDING', 'DISPATCHED', 'RUNNING'))) <> EXISTS (
       SELECT 1 FROM gpus_gpuresource g JOIN cases_workflowstep r ON g.step_run_id = r.id
       WHERE r.case_id = c.id)),
  (SELECT count(*) FROM (SELECT r.case_id FROM gpus_gpuresource g
     JOIN cases_workflowstep r ON g.step_run_id = r.id GROUP BY r.case_id
     HAVING count(*) > 1) twice),
  (SELECT count(*) FROM gpus_gpuresource g JOIN cases_workflowstep r ON g.step_run_id = r.id
     WHERE r.status NOT IN ('PENDING', 'DISPATCHED', 'RUNNING')),
  (SELECT count(*) FROM (SELECT case_id FROM cases_workflowstep
     WHERE status IN ('PENDING', 'DISPATCHED', 'RUNNING') GROUP BY case_id HAVING count(*) > 1) two)
"""


def expected_status(case_id: str) -> str:
    return Case.Status.FAILED if int(case_id.split("-")[1]) % 10 == 3 else Case.Status.COMPLETED


def outcome_for(run: WorkflowStep) -> tuple[str, dict]:
    """What the simulated worker reports: some interpreters fail, some uploads flake once."""
    route = STEP_ROUTES[run.type]
    number = int(run.case.case_id.split("-")[1])
    payload = {"case_id": run.case.case_id, "step_run_id": run.pk}
    if run.name == "run_interpreter" and number % 10 == 3:
        return route.failure, {**payload, "error_kind": ErrorKind.PERMANENT, "exit_code": 2}
    if run.name == "upload_case_files" and number % 10 == 5 and run.attempt == 1:
        return route.failure, {
            **payload,
            "error_kind": ErrorKind.TRANSIENT,
            "error_message": "reset",
        }
    return route.success, payload


def test_many_threads_never_double_book_a_gpu(stub_broker, use_config):
    use_config(lambda raw: raw["retries"].update(backoff_base_sec=0.01, backoff_max_sec=0.01))
    make_gpus(GPUS)
    work_queues = [
        stub_broker.queues[name]
        for actor in ("file_transfer", "remote_executor", "evaluator")
        for name in (QUEUES[actor], f"{QUEUES[actor]}.DQ")
    ]
    errors: list[BaseException] = []
    violations: list[tuple] = []
    done = threading.Event()
    checks = 0

    def guarded(body):
        def run():
            try:
                body()
            except BaseException as exc:  # surface any thread failure in the test
                errors.append(exc)
                done.set()
            finally:
                connection.close()

        return threading.Thread(target=run)

    def register_some(offset: int):
        for number in range(offset, CASES, THREADS):
            transitions.case_register(
                case_id=f"case-{number:03d}", source_path=f"/in/case-{number:03d}"
            )

    def work():
        while not done.is_set():
            for work_queue in work_queues:
                try:
                    data = work_queue.get_nowait()
                except queue.Empty:
                    continue
                from dramatiq import Message

                message = Message.decode(data)
                command, payload = message.args
                assert command in (
                    Command.UPLOAD_CASE,
                    Command.EXECUTE_COMMAND,
                    Command.DOWNLOAD_RESULTS,
                    Command.EVALUATE_RESULTS,
                )
                run = WorkflowStep.objects.select_related("case").get(pk=payload["step_run_id"])
                reply, outcome = outcome_for(run)
                handler = (
                    transitions.step_run_succeeded
                    if reply == STEP_ROUTES[run.type].success
                    else transitions.step_run_failed
                )
                handler(step_run_id=run.pk, command=reply, outcome=outcome)
                break
            else:
                time.sleep(0.002)

    def monitor():
        nonlocal checks
        while not done.is_set():
            with connection.cursor() as cursor:
                cursor.execute(VIOLATIONS_SQL)
                row = cursor.fetchone()
            checks += 1
            if any(row):
                violations.append(row)
            if Case.objects.filter(status__in=Case.ACTIVE).count() == 0 and (
                Case.objects.count() == CASES
            ):
                done.set()

    threads = [guarded(lambda i=i: register_some(i)) for i in range(THREADS)]
    threads += [guarded(work) for _ in range(THREADS)]
    threads.append(guarded(monitor))
    for thread in threads:
        thread.start()
    finished = done.wait(timeout=180)
    done.set()
    for thread in threads:
        thread.join(timeout=30)

    assert not errors, errors
    assert finished, "cases did not all reach a terminal state in time"
    assert violations == []
    assert checks > 10
    statuses = dict(Case.objects.values_list("case_id", "status"))
    assert len(statuses) == CASES
    assert statuses == {case_id: expected_status(case_id) for case_id in statuses}
    assert GPUResource.objects.filter(status=GPUResource.Status.AVAILABLE).count() == GPUS
    assert not GPUResource.objects.filter(step_run__isnull=False).exists()
    # Every flaky upload was retried once and is visible in the history.
    flaky = [c for c in statuses if int(c.split("-")[1]) % 10 == 5]
    assert all(
        WorkflowStep.objects.filter(case__case_id=c, name="upload_case_files").count() == 2
        for c in flaky
    )
