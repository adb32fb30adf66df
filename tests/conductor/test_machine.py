"""The conductor's decisions, table by table: (case state, event) -> plan.  No database.

Each row names a situation, the case's state, the event, and what the plan must say.  Only
the parts of the plan a row names are checked; the rest is the default (nothing).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from conductor import machine
from conductor.machine import (
    Beam,
    Cancel,
    CaseState,
    Failed,
    Found,
    HostBack,
    HostDown,
    HostGone,
    Refused,
    Restart,
    Silent,
    StepRun,
    Succeeded,
    decide,
)
from mqi_site.config import StepSpec

pytestmark = pytest.mark.pure

UPLOAD = StepSpec(name="upload", type="upload", progress=10)
INTERPRET = StepSpec(name="interpret", type="execute", progress=30)
SIMULATE = StepSpec(name="simulate", type="execute", progress=70, max_attempts=3)
DOWNLOAD = StepSpec(name="download", type="download", progress=90)
QA = (UPLOAD, INTERPRET, SIMULATE, DOWNLOAD)

GPU = 7  # the id of the GPU a step run holds


def running(step: StepSpec, *, run_id: int = 1, attempt: int = 1, gpu: int | None = GPU, **kw):
    """A step run of ``step`` in flight, and the state of a case running it."""
    run = StepRun(run_id, step.name, step.type, attempt=attempt, gpu=gpu, **kw)
    state = CaseState(
        status="PROCESSING",
        step=step.name,
        steps=QA,
        workflow="qa",
        active=(run,),
        tries={run.key: attempt},
        attempts={run.key: attempt},
        run_number=1,
        host="gpu1",
    )
    return run, state


def summary(plan: machine.Plan) -> dict[str, Any]:
    return {
        "status": plan.status,
        "step": plan.step,
        "error": plan.error,
        "new_run": bool(plan.new_run),
        "start": [
            (s.step.name, s.attempt, s.beam.number if s.beam else 0, s.gpu, s.inherit, s.delay_ms)
            for s in plan.start
        ],
        "finish": [(f.run, f.status, f.error_kind) for f in plan.finish],
        "release": plan.release,
        "kill": plan.kill,
        "redrive": plan.redrive,
        "wait_host": plan.wait_host,
        "notes": [note.kind for note in plan.notes],
    }


def expect(plan: machine.Plan, **wanted: Any) -> None:
    defaults = summary(machine.Plan())
    got = summary(plan)
    assert {key: got[key] for key in defaults} == {**defaults, **wanted}


# --- a folder is found -----------------------------------------------------------------------

NEW = CaseState(status="NEW", step="", steps=QA, workflow="qa")


@pytest.mark.parametrize(
    "name, state, event, wanted",
    [
        (
            "a valid folder starts its first step in a new run, holding a GPU (every_step)",
            NEW,
            Found(),
            {
                "step": "upload",
                "new_run": True,
                "start": [("upload", 1, 0, True, None, 0)],
            },
        ),
        (
            "under execute_steps the upload needs no GPU",
            replace(NEW, policy="execute_steps"),
            Found(),
            {"step": "upload", "new_run": True, "start": [("upload", 1, 0, False, None, 0)]},
        ),
        (
            "an invalid folder fails at once, with every reason",
            NEW,
            Found(("plan.dcm is not a DICOM file", "no log")),
            {
                "status": "FAILED",
                "error": (
                    "invalid_input",
                    "invalid case folder: plan.dcm is not a DICOM file; no log",
                ),
                "notes": ["failed"],
            },
        ),
        (
            "a workflow no longer configured fails the case",
            replace(NEW, steps=None),
            Found(),
            {
                "status": "FAILED",
                "error": ("permanent", "workflow 'qa' is not configured (not in config.yaml)"),
                "notes": ["failed"],
            },
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_found(name, state, event, wanted):
    expect(decide(state, event), **wanted)


# --- a step succeeds -------------------------------------------------------------------------


def test_a_step_done_hands_its_gpu_to_the_next_step():
    run, state = running(UPLOAD)
    expect(
        decide(state, Succeeded(run)),
        step="interpret",
        start=[("interpret", 1, 0, True, 1, 0)],
        finish=[(1, "SUCCEEDED", "")],
    )


def test_under_execute_steps_a_transfer_gets_a_gpu_only_for_the_command_after_it():
    run, state = running(UPLOAD, gpu=None)
    state = replace(state, policy="execute_steps")
    expect(
        decide(state, Succeeded(run)),
        step="interpret",
        start=[("interpret", 1, 0, True, None, 0)],
        finish=[(1, "SUCCEEDED", "")],
    )


def test_under_execute_steps_the_last_command_releases_its_gpu_for_the_download():
    run, state = running(SIMULATE)
    state = replace(state, policy="execute_steps")
    expect(
        decide(state, Succeeded(run)),
        step="download",
        start=[("download", 1, 0, False, None, 0)],
        finish=[(1, "SUCCEEDED", "")],
        release=[1],
    )


def test_the_last_step_done_completes_the_case_and_frees_its_gpu():
    run, state = running(DOWNLOAD)
    expect(
        decide(state, Succeeded(run)),
        status="COMPLETED",
        error=("", ""),
        finish=[(1, "SUCCEEDED", "")],
        release=[1],
        notes=["completed"],
    )


EVALUATE = StepSpec(name="evaluate", type="evaluate", progress=95)


@pytest.mark.parametrize("policy", ["every_step", "execute_steps"])
def test_the_evaluation_after_the_download_takes_no_gpu_and_frees_the_one_held(policy):
    run, state = running(DOWNLOAD, gpu=GPU if policy == "every_step" else None)
    state = replace(state, steps=(*QA, EVALUATE), policy=policy)
    expect(
        decide(state, Succeeded(run)),
        step="evaluate",
        start=[("evaluate", 1, 0, False, None, 0)],
        finish=[(1, "SUCCEEDED", "")],
        release=[1] if policy == "every_step" else [],
    )


@pytest.mark.parametrize("policy", ["every_step", "execute_steps"])
def test_an_evaluation_retried_after_a_transient_error_takes_no_gpu(policy):
    run, state = running(EVALUATE, gpu=None)
    state = replace(state, steps=(*QA, EVALUATE), policy=policy)
    plan = decide(state, Failed(run, "transient", "database restarting"))
    assert [(start.step.name, start.gpu) for start in plan.start] == [("evaluate", False)]


def test_a_long_outage_of_its_server_does_not_fail_a_case_being_evaluated_here():
    _, state = running(EVALUATE, gpu=None)
    state = replace(state, steps=(*QA, EVALUATE), host_up=False, executed=True)

    expect(decide(state, HostGone("2026-11-30T01:00:00+00:00", 3600, "refused")))


def test_a_beam_done_while_other_beams_run_only_frees_its_gpu():
    beam1 = StepRun(1, "simulate", "execute", beam=1, gpu=7)
    beam2 = StepRun(2, "simulate", "execute", beam=2, gpu=8)
    state = CaseState(
        status="PROCESSING", step="simulate", steps=QA, active=(beam1, beam2), run_number=1
    )
    expect(decide(state, Succeeded(beam1)), finish=[(1, "SUCCEEDED", "")], release=[1])


# --- a step fails ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, tries, kind, wanted",
    [
        (
            "a transient error within the budget: another attempt after a backoff, same GPU",
            1,
            "transient",
            {
                "start": [("simulate", 2, 0, True, 1, 2000)],
                "finish": [(1, "FAILED", "transient")],
                "notes": ["retry_scheduled"],
            },
        ),
        (
            "the backoff doubles",
            2,
            "transient",
            {
                "start": [("simulate", 3, 0, True, 1, 4000)],
                "finish": [(1, "FAILED", "transient")],
                "notes": ["retry_scheduled"],
            },
        ),
        (
            "a transient error with the budget spent fails the case",
            3,
            "transient",
            {
                "status": "FAILED",
                "error": ("transient", "simulate failed: gave up after 3 attempts: boom"),
                "finish": [(1, "FAILED", "transient")],
                "release": [1],
                "notes": ["failed"],
            },
        ),
        (
            "a permanent error is never retried",
            1,
            "permanent",
            {
                "status": "FAILED",
                "error": ("permanent", "simulate failed: boom"),
                "finish": [(1, "FAILED", "permanent")],
                "release": [1],
                "notes": ["failed"],
            },
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_failed(name, tries, kind, wanted):
    run, state = running(SIMULATE, attempt=tries)
    expect(decide(state, Failed(run, kind, "boom")), **wanted)


def test_a_beam_that_fails_for_good_cancels_and_kills_the_other_beams():
    beam1 = StepRun(1, "simulate", "execute", beam=1, gpu=7)
    beam2 = StepRun(2, "simulate", "execute", beam=2, gpu=8)
    waiting = StepRun(3, "simulate", "execute", beam=3, status="PENDING")
    state = CaseState(
        status="PROCESSING",
        step="simulate",
        steps=QA,
        active=(beam1, beam2, waiting),
        run_number=1,
    )
    plan = decide(state, Failed(beam1, "permanent", "exit 3"))
    expect(
        plan,
        status="FAILED",
        error=("permanent", "simulate (beam 1) failed: exit 3"),
        finish=[
            (1, "FAILED", "permanent"),
            (2, "CANCELLED", "cancelled"),
            (3, "CANCELLED", "cancelled"),
        ],
        release=[1, 2],
        kill=[2],
        notes=["failed"],
    )


# --- a server cannot be reached ----------------------------------------------------------------


def test_an_outage_costs_no_attempt_the_step_waits_for_its_server():
    run, state = running(SIMULATE)
    state = replace(state, executed=True, elsewhere=True)
    expect(
        decide(state, Failed(run, "unreachable", "refused")),
        wait_host=[1],
        notes=["waiting_for_host"],
    )


def test_with_a_single_server_even_an_upload_waits_for_it():
    run, state = running(UPLOAD)
    expect(
        decide(state, Failed(run, "unreachable", "refused")),
        wait_host=[1],
        notes=["waiting_for_host"],
    )


def test_a_case_that_ran_nothing_on_a_server_that_is_down_moves_to_another():
    run, state = running(UPLOAD)
    state = replace(state, elsewhere=True)
    expect(
        decide(state, Failed(run, "unreachable", "refused")),
        step="upload",
        new_run=True,
        start=[("upload", 2, 0, True, None, 0)],
        finish=[(1, "FAILED", "unreachable")],
        release=[1],
        notes=["moved"],
    )


@pytest.mark.parametrize("executed, moves", [(False, True), (True, False)])
def test_a_server_found_down_moves_only_the_cases_that_ran_nothing_there(executed, moves):
    _, state = running(INTERPRET if executed else UPLOAD)
    state = replace(state, elsewhere=True, executed=executed)
    plan = decide(state, HostDown("refused"))
    assert bool(plan.new_run) is moves
    assert (plan.notes[-1].kind if plan.notes else None) == ("moved" if moves else None)


def test_the_server_back_sends_the_waiting_steps_again():
    _, state = running(SIMULATE, status="WAITING_HOST")
    expect(decide(state, HostBack()), redrive=[1], notes=["host_back"])


def test_an_outage_longer_than_allowed_fails_the_case_saying_since_when():
    _, state = running(SIMULATE, status="WAITING_HOST")
    plan = decide(state, HostGone("2026-11-29T10:00:00+00:00", 3600, "refused"))
    expect(
        plan,
        status="FAILED",
        error=(
            "unreachable",
            "GPU server gpu1 has been unreachable since 2026-11-29T10:00:00+00:00, longer than "
            "its hosts.gpu1.max_outage_sec (3600 s); last error: refused",
        ),
        finish=[(1, "CANCELLED", "cancelled")],
        release=[1],
        kill=[1],
        notes=["failed"],
    )


# --- the reconciler ------------------------------------------------------------------------


def test_a_silent_step_is_sent_again():
    run, state = running(SIMULATE)
    expect(decide(state, Silent(run, 2, 130)), redrive=[1], notes=["redriven"])


def test_a_step_silent_after_every_resend_counts_as_a_transient_failure():
    run, state = running(SIMULATE)
    plan = decide(state, Silent(run, machine.MAX_REDRIVES, 700))
    expect(
        plan,
        start=[("simulate", 2, 0, True, 1, 2000)],
        finish=[(1, "FAILED", "transient")],
        notes=["retry_scheduled"],
    )


# --- operators --------------------------------------------------------------------------------

FAILED_AT_SIMULATE = CaseState(
    status="FAILED",
    step="simulate",
    steps=QA,
    workflow="qa",
    error_kind="permanent",
    attempts={("upload", 0): 1, ("interpret", 0): 1, ("simulate", 0): 1},
    run_number=1,
)


@pytest.mark.parametrize(
    "name, event, wanted",
    [
        (
            "a retry on the same folder goes on from the failed step, in the same run",
            Restart(actor="ana"),
            {
                "step": "simulate",
                "error": ("", ""),
                "start": [("simulate", 2, 0, True, None, 0)],
                "notes": ["retried"],
            },
        ),
        (
            "a retry on a changed folder starts again from the upload, in a new run",
            Restart(changed="added beam3.ptn", actor="ana"),
            {
                "step": "upload",
                "error": ("", ""),
                "new_run": True,
                "start": [("upload", 2, 0, True, None, 0)],
                "notes": ["replayed"],
            },
        ),
        (
            "a re-run starts from the upload in a new run",
            Restart(from_start=True, actor="ana"),
            {
                "step": "upload",
                "error": ("", ""),
                "new_run": True,
                "start": [("upload", 2, 0, True, None, 0)],
                "notes": ["replayed"],
            },
        ),
        (
            "a folder still invalid: the case stays failed with the current reasons",
            Restart(problems=("plan.dcm is empty (0 bytes)",), actor="ana"),
            {
                "error": ("invalid_input", "invalid case folder: plan.dcm is empty (0 bytes)"),
                "notes": ["recheck_failed"],
            },
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_restart(name, event, wanted):
    expect(decide(FAILED_AT_SIMULATE, event), **wanted)


def test_the_reason_of_a_restart_says_which_run_it_is():
    plan = decide(FAILED_AT_SIMULATE, Restart(changed="added beam3.ptn"))
    assert plan.said == (
        "re-running from the start as run 2 (the folder changed since run 1 was uploaded "
        "(added beam3.ptn); starting again from the upload)"
    )


@pytest.mark.parametrize(
    "state, event, refusal",
    [
        (running(SIMULATE)[1], Restart(), "is PROCESSING; only FAILED or CANCELLED"),
        (replace(FAILED_AT_SIMULATE, status="COMPLETED"), Cancel(), "is already COMPLETED"),
        (replace(FAILED_AT_SIMULATE, step="gone"), Restart(), "step 'gone' is not in workflow"),
    ],
)
def test_what_does_not_apply_is_refused(state, event, refusal):
    with pytest.raises(Refused, match=refusal):
        decide(state, event)


def test_cancel_ends_every_step_kills_commands_and_frees_gpus():
    upload = StepRun(1, "upload", "upload", gpu=None)
    command = StepRun(2, "simulate", "execute", gpu=7)
    state = CaseState(status="PROCESSING", step="simulate", steps=QA, active=(command, upload))
    expect(
        decide(state, Cancel("ana")),
        status="CANCELLED",
        error=("cancelled", "cancelled by ana"),
        finish=[(2, "CANCELLED", "cancelled"), (1, "CANCELLED", "cancelled")],
        release=[2],
        kill=[2],
        notes=["cancelled"],
    )


@pytest.mark.parametrize(
    "statuses, status",
    [
        (["PENDING"], "PENDING_RESOURCE"),
        (["PENDING", "PENDING"], "PENDING_RESOURCE"),
        (["PENDING", "RUNNING"], "PROCESSING"),
        (["WAITING_HOST"], "PROCESSING"),
        ([], "PROCESSING"),
    ],
)
def test_a_case_waits_for_a_gpu_only_while_every_active_step_does(statuses, status):
    assert machine.status_of(statuses) == status


def test_beams_are_named_in_messages():
    beam = Beam(2, "B2 G270")
    run = StepRun(5, "simulate", "execute", beam=beam.number, gpu=7)
    state = CaseState(status="PROCESSING", step="simulate", steps=QA, active=(run,), beams=(beam,))
    plan = decide(state, Failed(run, "permanent", "exit 1"))
    assert plan.error == ("permanent", "simulate (beam 2) failed: exit 1")


# --- a step that fans out over the plan's beams ----------------------------------------------

SIMULATE_BEAMS = SIMULATE.model_copy(update={"fan_out": "beams"})
FAN_QA = (UPLOAD, INTERPRET, SIMULATE_BEAMS, DOWNLOAD)
THREE_BEAMS = (Beam(1, "B1"), Beam(2, "B2"), Beam(3, "B3"))


def fanning(*active: StepRun, **changes: Any) -> CaseState:
    """A case of three beams in its fanned-out simulation, ``active`` its step runs."""
    return replace(
        CaseState(
            status="PROCESSING",
            step="simulate",
            steps=FAN_QA,
            workflow="qa",
            active=active,
            tries={run.key: run.attempt for run in active},
            attempts={run.key: run.attempt for run in active},
            beams=THREE_BEAMS,
            run_number=1,
            host="gpu1",
        ),
        **changes,
    )


def beam(number: int, *, run_id: int | None = None, gpu: int | None = None, **kw) -> StepRun:
    return StepRun(run_id or number, "simulate", "execute", beam=number, gpu=gpu, **kw)


INTERPRETED = StepRun(9, "interpret", "execute", gpu=GPU)


@pytest.mark.parametrize(
    "name, state, event, wanted",
    [
        (
            "the step before succeeds: one run per beam, the first takes over the case's GPU",
            fanning(INTERPRETED, step="interpret"),
            Succeeded(INTERPRETED),
            {
                "step": "simulate",
                "start": [
                    ("simulate", 1, 1, True, 9, 0),
                    ("simulate", 1, 2, True, None, 0),
                    ("simulate", 1, 3, True, None, 0),
                ],
                "finish": [(9, "SUCCEEDED", "")],
            },
        ),
        (
            "under execute_steps too (the interpreter held a GPU, the beams need them)",
            fanning(INTERPRETED, step="interpret", policy="execute_steps"),
            Succeeded(INTERPRETED),
            {
                "step": "simulate",
                "start": [
                    ("simulate", 1, 1, True, 9, 0),
                    ("simulate", 1, 2, True, None, 0),
                    ("simulate", 1, 3, True, None, 0),
                ],
                "finish": [(9, "SUCCEEDED", "")],
            },
        ),
        (
            "a beam done while others run or wait frees its GPU for whoever is first in line",
            fanning(beam(1, gpu=7), beam(2, gpu=8), beam(3, status="PENDING")),
            Succeeded(beam(1, gpu=7)),
            {"finish": [(1, "SUCCEEDED", "")], "release": [1]},
        ),
        (
            "the last beam done: the next step takes over its GPU (every_step)",
            fanning(beam(3, gpu=8)),
            Succeeded(beam(3, gpu=8)),
            {
                "step": "download",
                "start": [("download", 1, 0, True, 3, 0)],
                "finish": [(3, "SUCCEEDED", "")],
            },
        ),
        (
            "the last beam done under execute_steps: its GPU goes free, the download needs none",
            fanning(beam(3, gpu=8), policy="execute_steps"),
            Succeeded(beam(3, gpu=8)),
            {
                "step": "download",
                "start": [("download", 1, 0, False, None, 0)],
                "finish": [(3, "SUCCEEDED", "")],
                "release": [3],
            },
        ),
        (
            "a beam's transient failure retries that beam only, on its GPU, after its backoff",
            fanning(beam(1, gpu=7), beam(2, gpu=8, attempt=2)),
            Failed(beam(2, gpu=8, attempt=2), "transient", "ssh dropped"),
            {
                "start": [("simulate", 3, 2, True, 2, 4000)],
                "finish": [(2, "FAILED", "transient")],
                "notes": ["retry_scheduled"],
            },
        ),
        (
            "a beam's budget spent fails the case and cancels the other beams",
            fanning(beam(1, gpu=7), beam(2, gpu=8, attempt=3)),
            Failed(beam(2, gpu=8, attempt=3), "transient", "ssh dropped"),
            {
                "status": "FAILED",
                "error": (
                    "transient",
                    "simulate (beam 2) failed: gave up after 3 attempts: ssh dropped",
                ),
                "finish": [(2, "FAILED", "transient"), (1, "CANCELLED", "cancelled")],
                "release": [1, 2],
                "kill": [1],
                "notes": ["failed"],
            },
        ),
        (
            "a beam's server unreachable: that beam waits for it, the others go on",
            fanning(beam(1, gpu=7), beam(2, gpu=8)),
            Failed(beam(2, gpu=8), "unreachable", "connection refused"),
            {"wait_host": [2], "notes": ["waiting_for_host"]},
        ),
        (
            "a silent beam is re-sent on its own",
            fanning(beam(1, gpu=7), beam(2, gpu=8)),
            Silent(beam(2, gpu=8), redrives=0, silent_sec=130),
            {"redrive": [2], "notes": ["redriven"]},
        ),
        (
            "cancel kills every beam that runs and frees every GPU; waiting beams just end",
            fanning(beam(1, gpu=7), beam(2, gpu=8), beam(3, status="PENDING")),
            Cancel("ana"),
            {
                "status": "CANCELLED",
                "error": ("cancelled", "cancelled by ana"),
                "finish": [
                    (1, "CANCELLED", "cancelled"),
                    (2, "CANCELLED", "cancelled"),
                    (3, "CANCELLED", "cancelled"),
                ],
                "release": [1, 2],
                "kill": [1, 2],
                "notes": ["cancelled"],
            },
        ),
        (
            "a retry from the fanned-out step starts every beam again, each its next attempt",
            fanning(status="FAILED", error_kind="permanent", attempts={("simulate", 2): 1}),
            Restart(actor="ana"),
            {
                "step": "simulate",
                "error": ("", ""),
                "start": [
                    ("simulate", 1, 1, True, None, 0),
                    ("simulate", 2, 2, True, None, 0),
                    ("simulate", 1, 3, True, None, 0),
                ],
                "notes": ["retried"],
            },
        ),
        (
            "a folder whose plan has no treatment beams is refused before anything runs",
            replace(NEW, steps=FAN_QA),
            Found(),
            {
                "status": "FAILED",
                "error": (
                    "invalid_input",
                    "invalid case folder: the plan has no treatment beams",
                ),
                "notes": ["failed"],
            },
        ),
        (
            "a beam name with a control character never reaches a command line",
            replace(NEW, steps=FAN_QA, beams=(Beam(1, "B1"), Beam(2, "B2\x1b[2J"))),
            Found(),
            {
                "status": "FAILED",
                "error": (
                    "invalid_input",
                    "invalid case folder: the name of beam 2 (B2\\x1b[2J) has control characters",
                ),
                "notes": ["failed"],
            },
        ),
        (
            "a step that does not fan out runs once, whatever the plan's beams",
            replace(NEW, beams=THREE_BEAMS),
            Found(),
            {"step": "upload", "new_run": True, "start": [("upload", 1, 0, True, None, 0)]},
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_fan_out(name, state, event, wanted):
    expect(decide(state, event), **wanted)


def test_the_next_step_cannot_fan_out_the_step_that_succeeded_stays_succeeded():
    # the plan's beams were lost since the case was found (a config now fanning out)
    state = fanning(INTERPRETED, step="interpret", beams=())
    expect(
        decide(state, Succeeded(INTERPRETED)),
        status="FAILED",
        error=(
            "permanent",
            "simulate cannot fan out over the plan's beams: the plan has no treatment beams",
        ),
        finish=[(9, "SUCCEEDED", "")],
        release=[9],
        notes=["failed"],
    )
