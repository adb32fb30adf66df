"""Gamma analysis: the recomputed dose against the planning system's, and the QA verdict.

The *reference* is the treatment planning system's RT Dose; the *evaluated* dose is
MOQUI's recomputation from the delivery logs.  The gamma index is computed by
``pymedphys.gamma`` (the field's reference implementation, after Wendling et al. 2007)
at every reference voxel whose dose is at least the lower cut-off, searching the evaluated
dose, which pymedphys interpolates (linearly, scipy's ``RegularGridInterpolator``) at
distance steps of a tenth of the distance criterion.  The two grids may differ in extent
and spacing: both sets of coordinates are given to pymedphys.

* **Normalisation** is global: a criterion's dose difference is a percentage of the
  reference's maximum dose, and so is the lower cut-off.
* **Pass rate** of a criterion: the percentage of the reference points at or above the
  cut-off whose gamma is <= 1.  A reference point above the cut-off that lies outside the
  evaluated grid has no gamma; pymedphys would leave it out, here it counts as failed
  (and is reported), because a recomputation that misses part of the dose is no pass.
* **Verdict**: passed when every criterion's pass rate reaches the threshold.
* **max_gamma** (default 2) stops the search once gamma is known to exceed it, which
  bounds the time a grossly failing dose takes; pymedphys reports larger values *as*
  ``max_gamma``.  So it must exceed 1 (at exactly 1 every failing point would read 1 and
  pass); above 1 the pass rates are exact, and the gamma picture shows 0-2, so the default
  loses nothing either shows.  ``random_subset`` is not used: it samples with numpy's
  global random state, so the same doses could get different verdicts.
* **Speed.**  The time grows with the points evaluated and, above all, with the failing
  ones, which are searched out to max_gamma x the distance.  pymedphys's default
  interpolation needs numba (a large compiled dependency) and is a few times faster;
  scipy's is used here; switching is the dependency plus ``interp_algo`` in the call below.

pymedphys reports its progress on the *root* logger (``logging.info``, no named logger of
its own) with numpy arrays as arguments, which cannot be formatted (numpy >= 2.4 refuses
to turn a 1-element array into a float; several criteria never could): wherever the root
logger shows INFO (the Django settings do) every analysis would print a "Logging error"
traceback, and under pytest fail.  ``gamma_analysis`` therefore puts a filter on the root
logger that drops pymedphys's records below WARNING (its warnings and errors still show);
the verdict is in the result, not in those lines.

Several criteria are computed in one pymedphys call (it searches every combination of the
criteria's dose and distance values at once).

**Multi-beam plans.**  The reference is the planning system's dose of the whole plan, so
the evaluated dose must be the plan's total: the sum of all its beams' doses, for the
same number of fractions.  MOQUI's per-plan simulation writes that total; when the beams
are simulated separately (one RT Dose per beam, DoseSummationType BEAM), ``sum_doses``
adds them up, refusing grids that differ (extent, spacing, frame of reference, plan) and
a beam counted twice, since each of those gives a total that looks right and is not.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pymedphys

from evaluation.dose import DoseGrid

DEFAULT_CRITERIA: tuple[tuple[float, float], ...] = ((3.0, 2.0),)
DEFAULT_LOWER_CUTOFF_PERCENT = 10.0
DEFAULT_MAX_GAMMA = 2.0
DEFAULT_PASS_THRESHOLD_PERCENT = 95.0
_GRID_TOLERANCE_MM = 1e-3


class _PymedphysProgressFilter(logging.Filter):
    """Drops the records pymedphys logs on the root logger below WARNING (see above)."""

    package_dir = os.path.dirname(pymedphys.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.package_dir)


_PYMEDPHYS_PROGRESS = _PymedphysProgressFilter()


class GammaError(ValueError):
    """The two doses cannot be compared; the message says why and what to do."""


@dataclass(frozen=True)
class Criterion:
    dose_percent: float  # of the reference's maximum dose (global)
    distance_mm: float

    def __str__(self) -> str:
        return f"{self.dose_percent:g}%/{self.distance_mm:g}mm"


@dataclass(frozen=True, eq=False)
class CriterionResult:
    criterion: Criterion
    pass_rate_percent: float
    points_evaluated: int  # reference points at or above the lower cut-off
    points_passed: int
    points_outside_evaluated_grid: int  # counted as failed
    passed: bool  # pass rate >= the threshold
    gamma: np.ndarray  # on the reference grid; NaN below the cut-off or outside the grid

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"gamma {self.criterion}: {self.pass_rate_percent:.1f}% of "
            f"{self.points_evaluated:,} points <= 1 ({verdict})"
        )


@dataclass(frozen=True, eq=False)
class GammaResult:
    criteria: tuple[CriterionResult, ...]
    pass_threshold_percent: float
    lower_cutoff_percent: float
    normalisation_gy: float  # the reference's maximum dose
    max_gamma: float | None

    @property
    def passed(self) -> bool:
        """The QA verdict: every criterion's pass rate reached the threshold."""
        return all(result.passed for result in self.criteria)

    def describe(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        rates = "; ".join(result.describe() for result in self.criteria)
        return (
            f"{verdict} (threshold {self.pass_threshold_percent:g}%, cut-off "
            f"{self.lower_cutoff_percent:g}% of {self.normalisation_gy:.3f} Gy): {rates}"
        )


def gamma_analysis(
    reference: DoseGrid,
    evaluated: DoseGrid,
    *,
    criteria: Sequence[tuple[float, float]] = DEFAULT_CRITERIA,
    lower_cutoff_percent: float = DEFAULT_LOWER_CUTOFF_PERCENT,
    max_gamma: float | None = DEFAULT_MAX_GAMMA,
    pass_threshold_percent: float = DEFAULT_PASS_THRESHOLD_PERCENT,
) -> GammaResult:
    """Compare ``evaluated`` (MOQUI's dose) with ``reference`` (the planning system's).

    ``criteria`` are (dose %, distance mm) pairs, e.g. ``[(3, 2), (2, 2)]``.
    """
    wanted = _criteria(criteria)
    _check_options(lower_cutoff_percent, max_gamma, pass_threshold_percent)
    check_comparable(reference, evaluated)
    normalisation = float(np.max(reference.dose_gy))
    if not normalisation > 0:
        raise GammaError(f"{_name(reference)} has no dose (its maximum is {normalisation:g} Gy)")
    root = logging.getLogger()
    if _PYMEDPHYS_PROGRESS not in root.filters:  # idempotent; survives a logging reconfigure
        root.addFilter(_PYMEDPHYS_PROGRESS)
    doses = sorted({criterion.dose_percent for criterion in wanted})
    distances = sorted({criterion.distance_mm for criterion in wanted})
    computed = pymedphys.gamma(
        reference.axes_mm,
        reference.dose_gy,
        evaluated.axes_mm,
        evaluated.dose_gy,
        dose_percent_threshold=doses,
        distance_mm_threshold=distances,
        lower_percent_dose_cutoff=lower_cutoff_percent,
        interp_fraction=10,
        max_gamma=max_gamma,
        local_gamma=False,
        global_normalisation=normalisation,
        interp_algo="scipy",
    )
    if not isinstance(computed, dict):  # one dose and one distance: a bare array
        computed = {(doses[0], distances[0]): computed}
    # the points pymedphys evaluates, computed as it does
    above_cutoff = reference.dose_gy >= lower_cutoff_percent / 100 * normalisation
    results = tuple(
        _criterion_result(
            criterion,
            np.asarray(computed[(criterion.dose_percent, criterion.distance_mm)]),
            above_cutoff,
            pass_threshold_percent,
        )
        for criterion in wanted
    )
    return GammaResult(
        criteria=results,
        pass_threshold_percent=pass_threshold_percent,
        lower_cutoff_percent=lower_cutoff_percent,
        normalisation_gy=normalisation,
        max_gamma=max_gamma,
    )


def check_comparable(reference: DoseGrid, evaluated: DoseGrid) -> None:
    """Refuse two doses whose comparison would mean nothing, saying why."""
    pairs = (
        ("frames of reference", reference.frame_of_reference_uid, evaluated.frame_of_reference_uid),
        ("plans", reference.referenced_plan_uid, evaluated.referenced_plan_uid),
    )
    for what, ours, theirs in pairs:
        if ours and theirs and ours != theirs:
            raise GammaError(
                f"{_name(evaluated)} and {_name(reference)} belong to different {what} "
                f"({theirs} vs {ours}); compare the recomputed dose with the planning "
                "system's dose of the same plan"
            )
    kinds = {reference.dose_type.upper(), evaluated.dose_type.upper()} - {""}
    if len(kinds) > 1:
        raise GammaError(
            f"{_name(reference)} is a {reference.dose_type} dose and {_name(evaluated)} a "
            f"{evaluated.dose_type} one (DoseType): an RBE-weighted (EFFECTIVE) dose is ~10% "
            "above the physical one; compare doses of the same type"
        )
    if reference.summation_type.upper() == "PLAN" and evaluated.summation_type.upper() == "BEAM":
        raise GammaError(
            f"{_name(evaluated)} is one beam's dose and {_name(reference)} the whole plan's; "
            "sum the beams' doses first (sum_doses)"
        )


def sum_doses(grids: Sequence[DoseGrid]) -> DoseGrid:
    """The total of several doses on the same grid, e.g. a plan's beams simulated apart.

    Refuses grids that differ in shape or coordinates, frame of reference or plan, and a
    beam that appears in two of them.
    """
    if not grids:
        raise GammaError("no doses to sum")
    first = grids[0]
    beams: list[int] = []
    for grid in grids:
        _check_same_grid(first, grid)
        repeated = set(beams) & set(grid.referenced_beam_numbers)
        if repeated:
            raise GammaError(
                f"beam {sorted(repeated)[0]} is in more than one of the doses to sum "
                f"(again in {_name(grid)}); each beam's dose must be added once"
            )
        beams += grid.referenced_beam_numbers
    total = np.sum([grid.dose_gy for grid in grids], axis=0)
    return replace(
        first,
        dose_gy=total,
        referenced_beam_numbers=tuple(sorted(beams)),
        summation_type="PLAN" if len(grids) > 1 else first.summation_type,
        source=" + ".join(grid.source or "dose" for grid in grids),
    )


def _check_same_grid(first: DoseGrid, other: DoseGrid) -> None:
    for what in ("frame_of_reference_uid", "referenced_plan_uid", "dose_type"):
        if getattr(first, what) != getattr(other, what):
            raise GammaError(
                f"{_name(other)} and {_name(first)} differ in {what.replace('_', ' ')} "
                f"({getattr(other, what)!r} vs {getattr(first, what)!r}); only doses of "
                "the same plan can be summed"
            )
    if other.shape != first.shape:
        raise GammaError(
            f"{_name(other)} has a {other.shape[2]} x {other.shape[1]} x {other.shape[0]} "
            f"grid, {_name(first)} {first.shape[2]} x {first.shape[1]} x {first.shape[0]}; "
            "doses are summed only on the same grid (simulate every beam on the plan's grid)"
        )
    for axis, ours, theirs in zip("zyx", first.axes_mm, other.axes_mm, strict=True):
        if not np.allclose(ours, theirs, rtol=0, atol=_GRID_TOLERANCE_MM):
            raise GammaError(
                f"{_name(other)} and {_name(first)} lie on different grids (their {axis} "
                f"coordinates differ, from {theirs[0]:g} vs {ours[0]:g} mm); doses are "
                "summed only on the same grid (simulate every beam on the plan's grid)"
            )


def _criterion_result(
    criterion: Criterion, gamma: np.ndarray, above_cutoff: np.ndarray, threshold: float
) -> CriterionResult:
    evaluated = int(np.count_nonzero(above_cutoff))
    outside = int(np.count_nonzero(above_cutoff & np.isnan(gamma)))
    with np.errstate(invalid="ignore"):
        passed_points = int(np.count_nonzero(above_cutoff & (gamma <= 1)))
    rate = 100.0 * passed_points / evaluated if evaluated else 0.0
    return CriterionResult(
        criterion=criterion,
        pass_rate_percent=rate,
        points_evaluated=evaluated,
        points_passed=passed_points,
        points_outside_evaluated_grid=outside,
        passed=evaluated > 0 and rate >= threshold,
        gamma=gamma,
    )


def _criteria(pairs: Sequence[tuple[float, float]]) -> list[Criterion]:
    if not pairs:
        raise GammaError("no gamma criteria given; give (dose %, distance mm) pairs")
    criteria = []
    for pair in pairs:
        dose, distance = (float(value) for value in pair)
        if not (dose > 0 and distance > 0 and math.isfinite(dose) and math.isfinite(distance)):
            raise GammaError(f"gamma criterion {pair!r}: dose % and distance mm must be > 0")
        criteria.append(Criterion(dose, distance))
    return list(dict.fromkeys(criteria))


def _check_options(cutoff: float, max_gamma: float | None, threshold: float) -> None:
    if not 0 <= cutoff < 100:
        raise GammaError(f"lower dose cut-off {cutoff:g}% must be from 0 to below 100%")
    if max_gamma is not None and not max_gamma > 1:
        # pymedphys reports gamma above max_gamma as max_gamma: at 1, a failing point passes
        raise GammaError(f"max_gamma {max_gamma:g} must be above 1 (or None: no limit)")
    if not 0 < threshold <= 100:
        raise GammaError(f"pass threshold {threshold:g}% must be above 0 and at most 100%")


def _name(grid: DoseGrid) -> str:
    return grid.source or "the dose"
