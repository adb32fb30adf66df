"""The evaluate worker: ``evaluate_results``, the QA verdict of a run's results.

MOQUI's dose (the RT Dose files the run downloaded; several, one per beam, are summed with
``sum_doses``) is compared by gamma analysis (:mod:`evaluation.gamma`) with the planning
system's (the RT Dose in the case folder, as the run uploaded it), with the criteria of
``config.yaml``'s ``evaluation`` section.  It runs here, on files already here: no GPU,
no GPU server.  The outcome:

* a verdict (passed or failed): a ``QAResult`` with a pass rate and a gamma map per
  criterion, and ``evaluation_completed``: a dose below the threshold is a result of the
  QA, not a failure of the step;
* no planning system's dose in the case folder: ``evaluation_completed``, "not
  evaluated", with the reason;
* results without an RT Dose, a dose that cannot be read or compared, or a file that is
  no longer what the run uploaded or downloaded: ``evaluation_failed``, permanent (trying
  again gives the same answer), with the reason.

Every file is checked against the SHA-256 recorded for the run (its manifest, its result
files) before it is read: a verdict is never computed from files the run did not use.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connection, transaction

from cases import provenance
from cases.models import Case, CaseRun, QACriterion, QAResult, WorkflowStep
from cases.results import ResultFileError, confined_path, dose_result_files, open_confined
from cases.services import (
    active_step_run,
    step_run_claim,
    step_run_heartbeat,
    step_run_is_active,
)
from evaluation.dose import DoseFileError, DoseGrid, is_rt_dose, read_dose
from evaluation.gamma import GammaError, GammaResult, gamma_analysis, sum_doses
from evaluation.picture import gamma_picture
from mqi_site.config import EvaluationSection, get_config
from mqi_site.messaging import CONDUCTOR, Command, ErrorKind, send

log = logging.getLogger(__name__)

NO_TPS_DOSE = "no TPS dose in the case folder"
# While the analysis runs, the step run's deadline is pushed ahead this often (at most).
HEARTBEAT_EVERY_SEC = 10


class EvaluationError(Exception):
    """The run's doses cannot be evaluated; the message says why and what to do."""


def handle(command: str, payload: dict[str, Any]) -> None:
    if command != Command.EVALUATE_RESULTS:
        raise ValueError(f"unknown evaluator command {command!r}")
    row = active_step_run(payload["step_run_id"], "case", "run")
    if row is None:
        return  # cancelled or superseded
    config = get_config()
    grace_sec = config.conductor.dispatch_grace_sec
    if not step_run_claim(step_run_id=row.pk, deadline_sec=grace_sec):
        log.info("%s: already taken by another worker; this message is a duplicate", row)
        return
    outcome = {"case_id": row.case.case_id, "step_run_id": row.pk}
    try:
        with _heartbeats(row.pk, grace_sec):
            result = evaluate_run(row.case, row.run, config.evaluation)
    except (EvaluationError, ResultFileError, DoseFileError, GammaError) as exc:
        message = f"QA evaluation failed: {exc}"
        log.warning("%s: %s", row, message)
        send(
            CONDUCTOR,
            Command.EVALUATION_FAILED,
            {**outcome, "error_kind": ErrorKind.PERMANENT, "error_message": message},
        )
        return
    if not qa_result_record(step_run=row, evaluation=result):
        return  # cancelled while it ran: nothing to report
    log.info("%s: %s", row, result.describe())
    send(CONDUCTOR, Command.EVALUATION_COMPLETED, {**outcome, "stdout_tail": result.describe()})


@dataclass
class Evaluation:
    """What the analysis found: a gamma result, or why there is none."""

    gamma: GammaResult | None = None
    reference: DoseGrid | None = None  # the (summed) dose the gamma map is drawn on
    note: str = ""
    reference_files: list[dict] = field(default_factory=list)
    evaluated_files: list[dict] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.gamma is None:
            return QAResult.Verdict.NOT_EVALUATED
        return QAResult.Verdict.PASSED if self.gamma.passed else QAResult.Verdict.FAILED

    def describe(self) -> str:
        return self.gamma.describe() if self.gamma else f"not evaluated: {self.note}"


def evaluate_run(case: Case, run: CaseRun, settings: EvaluationSection) -> Evaluation:
    """Gamma of the run's downloaded dose against the planning system's dose."""
    evaluated_files = _evaluated_doses(case, run)
    reference_files, gone = _reference_doses(case, run, settings)
    if not reference_files:
        note = NO_TPS_DOSE
        if gone:
            note += (
                f" ({', '.join(gone)} left it after run {run.number} was uploaded; re-run the "
                "case to evaluate it)"
            )
        return Evaluation(note=note, evaluated_files=_listed(evaluated_files))
    reference = _one_dose([read_dose(path) for path, *_ in reference_files], "planning system")
    evaluated = _one_dose([read_dose(path) for path, *_ in evaluated_files], "MOQUI")
    gamma = gamma_analysis(
        reference,
        evaluated,
        criteria=settings.criteria,
        lower_cutoff_percent=settings.low_dose_cutoff_pct,
        max_gamma=settings.max_gamma,
        pass_threshold_percent=settings.pass_rate_pct,
    )
    return Evaluation(
        gamma=gamma,
        reference=reference,
        reference_files=_listed(reference_files),
        evaluated_files=_listed(evaluated_files),
    )


def qa_result_record(*, step_run: WorkflowStep, evaluation: Evaluation) -> bool:
    """Store the evaluation of ``step_run`` (replacing an earlier one of a re-sent step run);
    False when the step run is no longer active."""
    pictures = _gamma_pictures(evaluation)
    with transaction.atomic():
        if not step_run_is_active(step_run.pk):
            return False
        QAResult.objects.filter(step_run=step_run).delete()
        gamma = evaluation.gamma
        result = QAResult.objects.create(
            run=step_run.run,
            step_run=step_run,
            verdict=evaluation.verdict,
            note=evaluation.note,
            pass_rate_pct=gamma.pass_threshold_percent if gamma else None,
            low_dose_cutoff_pct=gamma.lower_cutoff_percent if gamma else None,
            normalisation_gy=gamma.normalisation_gy if gamma else None,
            reference_files=evaluation.reference_files,
            evaluated_files=evaluation.evaluated_files,
        )
        QACriterion.objects.bulk_create(
            QACriterion(
                result=result,
                dose_pct=item.criterion.dose_percent,
                distance_mm=item.criterion.distance_mm,
                pass_rate_pct=item.pass_rate_percent,
                points_evaluated=item.points_evaluated,
                points_passed=item.points_passed,
                points_outside=item.points_outside_evaluated_grid,
                passed=item.passed,
                gamma_png=picture,
            )
            for item, picture in zip(gamma.criteria if gamma else (), pictures, strict=True)
        )
    return True


# --- finding the doses --------------------------------------------------------------------


def _evaluated_doses(case: Case, run: CaseRun) -> list[tuple[Path, str, str]]:
    """The RT Doses among the run's result files, each as downloaded: (where it is, its
    name in the results, its SHA-256)."""
    paths = provenance.run_paths(case, run)
    if paths is None:
        raise EvaluationError(f"case {case.case_id} has no results folder")
    found = []
    for result_file, path in dose_result_files(case, run, skip_unreadable=False):
        _check_unchanged(path, result_file.sha256, f"run {run.number}'s results")
        found.append((path, result_file.path, result_file.sha256))
    if not found:
        raise EvaluationError(
            f"the results of run {run.number} ({paths.results_dir}) hold no RT Dose; check "
            "the simulation's output (run_moqui_sim's stdout and stderr)"
        )
    return found


def _reference_doses(
    case: Case, run: CaseRun, settings: EvaluationSection
) -> tuple[list[tuple[Path, str, str]], list[str]]:
    """The RT Doses among the files the run uploaded from the case folder, and the files
    that could have been one but have left the folder since (the run went on from its
    uploaded copy)."""
    folder = Path(case.source_path)
    found, gone = [], []
    for entry in run.manifest:
        name = entry["path"].rsplit("/", 1)[-1]
        if not any(fnmatch.fnmatch(name, pattern) for pattern in settings.tps_dose_globs):
            continue
        if not os.path.lexists(folder / entry["path"]):
            gone.append(entry["path"])
            continue
        try:
            path = confined_path(folder, entry["path"])
        except ResultFileError as exc:
            raise EvaluationError(f"the case folder: {exc}; re-run the case") from None
        try:
            dose = is_rt_dose(path)
        except DoseFileError:
            continue  # the scanner let it in as some other file
        if dose:
            _check_unchanged(
                path, entry["sha256"], f"the case folder as run {run.number} uploaded it"
            )
            found.append((path, entry["path"], entry["sha256"]))
    return found, gone


def _check_unchanged(path: Path, sha256: str, what: str) -> None:
    with open_confined(path) as handle:
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != sha256:
        raise EvaluationError(
            f"{path.name} is no longer the file of {what} (SHA-256 {actual[:12]} instead of "
            f"{sha256[:12]}); re-run the case from the start"
        )


def _one_dose(grids: list[DoseGrid], whose: str) -> DoseGrid:
    """One dose: the only one, or the sum of per-beam doses (refusing anything else)."""
    if len(grids) == 1:
        return grids[0]
    kinds = {grid.summation_type.upper() for grid in grids}
    if kinds != {"BEAM"}:
        names = ", ".join(grid.source for grid in grids)
        raise EvaluationError(
            f"several {whose} RT Doses ({names}) that are not one dose per beam "
            f"(DoseSummationType {', '.join(sorted(kinds))}); keep only the plan's dose"
        )
    return sum_doses(grids)


def _listed(files: list[tuple[Path, str, str]]) -> list[dict]:
    return [{"path": name, "sha256": sha256} for _, name, sha256 in files]


def _gamma_pictures(evaluation: Evaluation) -> list[bytes]:
    if evaluation.gamma is None or evaluation.reference is None:
        return []
    return [gamma_picture(evaluation.reference, item) for item in evaluation.gamma.criteria]


@contextmanager
def _heartbeats(step_run_id: int, grace_sec: float) -> Iterator[None]:
    """Keep the step run's deadline ahead while a long analysis runs (no word from a worker
    past its deadline makes the reconciler send the command again)."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(min(HEARTBEAT_EVERY_SEC, grace_sec / 3)):
                try:
                    step_run_heartbeat(step_run_id=step_run_id, deadline_sec=grace_sec)
                except DatabaseError:
                    log.warning("step run %s: heartbeat not written", step_run_id, exc_info=True)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"evaluate-{step_run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
