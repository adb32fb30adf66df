"""Gamma analysis of an evaluated dose against a reference, and summing beam doses."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from evaluation.dose import DoseGrid
from evaluation.gamma import GammaError, GammaResult, gamma_analysis, sum_doses
from tests.evaluation.grids import axis, blob, grid_of

CUBE = axis(-14, 2.0, 15)  # 15 x 15 x 15 voxels of 2 mm


@pytest.fixture(scope="module")
def reference() -> DoseGrid:
    return grid_of(blob(sigma=6), CUBE, CUBE, CUBE)


@pytest.fixture(scope="module")
def shifted_by_3_mm(reference: DoseGrid) -> GammaResult:
    evaluated = grid_of(blob(shift_x=3, sigma=6), CUBE, CUBE, CUBE)
    return gamma_analysis(reference, evaluated, criteria=[(3, 2), (2, 2), (3, 4)])


def test_identical_doses_pass_everywhere(reference: DoseGrid) -> None:
    result = gamma_analysis(reference, reference, criteria=[(3, 2), (2, 2)])

    assert result.passed
    assert [c.pass_rate_percent for c in result.criteria] == [100.0, 100.0]
    # every voxel at or above 10 % of the maximum is evaluated
    expected_points = int(np.count_nonzero(reference.dose_gy >= 0.1 * reference.dose_gy.max()))
    assert [c.points_evaluated for c in result.criteria] == [expected_points] * 2
    assert np.nanmax(result.criteria[0].gamma) == 0
    assert result.normalisation_gy == pytest.approx(2.0)


def test_a_3_mm_shift_fails_2_mm_criteria(shifted_by_3_mm: GammaResult) -> None:
    three_two, two_two, _ = shifted_by_3_mm.criteria

    assert not shifted_by_3_mm.passed
    assert (str(three_two.criterion), three_two.passed) == ("3%/2mm", False)
    assert three_two.pass_rate_percent < 80
    assert not two_two.passed
    assert two_two.pass_rate_percent <= three_two.pass_rate_percent


def test_a_small_max_gamma_keeps_the_pass_rates(
    reference: DoseGrid, shifted_by_3_mm: GammaResult
) -> None:
    evaluated = grid_of(blob(shift_x=3, sigma=6), CUBE, CUBE, CUBE)

    capped = gamma_analysis(reference, evaluated, criteria=[(3, 2)], max_gamma=1.1)

    assert capped.criteria[0].pass_rate_percent == shifted_by_3_mm.criteria[0].pass_rate_percent
    assert np.nanmax(capped.criteria[0].gamma) == pytest.approx(1.1)


def test_a_3_mm_shift_passes_a_4_mm_criterion(shifted_by_3_mm: GammaResult) -> None:
    three_four = shifted_by_3_mm.criteria[2]

    assert three_four.passed
    assert three_four.pass_rate_percent > 99
    assert np.nanmax(three_four.gamma) <= 2  # values above max_gamma are shown as max_gamma


def test_the_verdict_needs_every_criterion_to_reach_the_threshold(
    shifted_by_3_mm: GammaResult,
) -> None:
    assert shifted_by_3_mm.describe().startswith("FAILED (threshold 95%, cut-off 10% of 2.000 Gy)")
    assert "gamma 3%/4mm: 99.9% of 1,141 points <= 1 (passed)" in shifted_by_3_mm.describe()


def test_pymedphys_matches_a_brute_force_gamma_on_a_shifted_edge() -> None:
    # a dose falling off along x only: gamma is then a one-dimensional search, which a
    # brute force does exactly (linear interpolation of the evaluated dose, 1 um steps)
    x, yz = axis(0, 1.0, 31), axis(-1, 1.0, 3)

    def edge(shift: float):
        return lambda x, y, z: 2.0 / (1 + np.exp((x - 15 - shift) / 4.0)) + 0 * y + 0 * z

    reference, evaluated = grid_of(edge(0), x, yz, yz), grid_of(edge(3), x, yz, yz)

    result = gamma_analysis(reference, evaluated, criteria=[(3, 2)], max_gamma=None)

    profile_reference = reference.dose_gy[1, 1, :]
    fine_x = np.arange(x[0], x[-1] + 1e-9, 0.001)
    fine_dose = np.interp(fine_x, x, evaluated.dose_gy[1, 1, :])
    dose_criterion = 0.03 * profile_reference.max()
    brute_force = np.array(
        [
            np.min(np.hypot((fine_dose - dose) / dose_criterion, (fine_x - position) / 2.0))
            for position, dose in zip(x, profile_reference, strict=True)
        ]
    )
    evaluated_points = profile_reference >= 0.1 * profile_reference.max()
    gamma = result.criteria[0].gamma[1, 1, :]
    np.testing.assert_allclose(gamma[evaluated_points], brute_force[evaluated_points], atol=0.01)
    assert np.all(np.isnan(gamma[~evaluated_points]))
    brute_force_rate = 100 * np.mean(brute_force[evaluated_points] <= 1)
    assert result.criteria[0].pass_rate_percent == pytest.approx(brute_force_rate)


def test_grids_of_different_extent_and_spacing_are_compared(reference: DoseGrid) -> None:
    # the same dose on a finer, offset and larger grid (as MOQUI's grid may be)
    evaluated = grid_of(blob(sigma=6), axis(-16.5, 1.5, 23), axis(-15, 1.5, 21), axis(-16, 2.5, 14))

    result = gamma_analysis(reference, evaluated, criteria=[(2, 2)])

    assert result.passed
    assert result.criteria[0].pass_rate_percent == 100.0


def test_reference_dose_outside_the_evaluated_grid_counts_as_failed(reference: DoseGrid) -> None:
    # an evaluated grid that stops at x = 0 misses half of the dose
    half = grid_of(blob(sigma=6), axis(0, 2.0, 8), CUBE, CUBE)

    result = gamma_analysis(reference, half, criteria=[(3, 2)])

    (criterion,) = result.criteria
    assert not result.passed
    assert criterion.points_outside_evaluated_grid > 0
    assert criterion.points_passed + criterion.points_outside_evaluated_grid <= (
        criterion.points_evaluated
    )
    assert criterion.pass_rate_percent < 60


def test_pymedphys_progress_lines_do_not_reach_the_log(
    reference: DoseGrid, caplog: pytest.LogCaptureFixture
) -> None:
    # pymedphys logs them on the root logger with numpy arrays as arguments, which no
    # handler can format (pytest's capture handler would raise)
    caplog.set_level(logging.DEBUG)
    logging.getLogger().info("before")

    result = gamma_analysis(reference, reference, criteria=[(3, 2), (2, 2)])

    assert result.passed
    assert [record.getMessage() for record in caplog.records] == ["before"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frame_of_reference_uid": "9.9"}, "belong to different frames of reference"),
        ({"referenced_plan_uid": "9.9"}, "belong to different plans"),
        ({"dose_type": "EFFECTIVE"}, "RBE-weighted"),
        ({"summation_type": "BEAM"}, "sum the beams' doses first"),
    ],
)
def test_it_refuses_doses_that_do_not_belong_together(
    reference: DoseGrid, change: dict[str, str], message: str
) -> None:
    evaluated = dataclasses.replace(reference, source="RTDOSE.dcm", **change)

    with pytest.raises(GammaError, match=message):
        gamma_analysis(reference, evaluated)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"criteria": []}, "no gamma criteria"),
        ({"criteria": [(3, 0)]}, "must be > 0"),
        ({"lower_cutoff_percent": 100}, "cut-off"),
        ({"max_gamma": 0.5}, "max_gamma 0.5 must be above 1"),
        # pymedphys would report every failing point's gamma as 1, a pass
        ({"max_gamma": 1}, "max_gamma 1 must be above 1"),
        ({"pass_threshold_percent": 0}, "pass threshold"),
    ],
)
def test_it_refuses_meaningless_options(reference: DoseGrid, options: dict, message: str) -> None:
    with pytest.raises(GammaError, match=message):
        gamma_analysis(reference, reference, **options)


# --- summing beam doses -----------------------------------------------------------------------


def beam(number: int, shift: float = 0.0, **change: object) -> DoseGrid:
    grid = grid_of(
        blob(shift_x=shift, sigma=6, peak=1.0),
        CUBE,
        CUBE,
        CUBE,
        summation_type="BEAM",
        referenced_beam_numbers=(number,),
        source=f"beam{number}/RTDOSE.dcm",
    )
    return dataclasses.replace(grid, **change) if change else grid


def test_beam_doses_add_up_to_the_plan_dose() -> None:
    beams = [beam(1, shift=-4), beam(2, shift=4)]

    total = sum_doses(beams)

    np.testing.assert_allclose(total.dose_gy, beams[0].dose_gy + beams[1].dose_gy)
    assert total.referenced_beam_numbers == (1, 2)
    assert total.summation_type == "PLAN"
    assert total.source == "beam1/RTDOSE.dcm + beam2/RTDOSE.dcm"


def test_it_refuses_to_sum_doses_on_different_grids() -> None:
    moved = beam(2, x_mm=CUBE + 1.0)

    with pytest.raises(GammaError, match="lie on different grids \\(their x coordinates differ"):
        sum_doses([beam(1), moved])


def test_it_refuses_to_sum_grids_of_different_size() -> None:
    smaller = grid_of(blob(), CUBE[:-1], CUBE, CUBE, referenced_beam_numbers=(2,))

    with pytest.raises(GammaError, match="doses are summed only on the same grid"):
        sum_doses([beam(1), smaller])


def test_it_refuses_to_count_a_beam_twice() -> None:
    with pytest.raises(GammaError, match="beam 1 is in more than one of the doses to sum"):
        sum_doses([beam(1), beam(2), beam(1, shift=2)])


def test_it_refuses_to_sum_doses_of_different_plans() -> None:
    with pytest.raises(GammaError, match="differ in referenced plan uid"):
        sum_doses([beam(1), beam(2, referenced_plan_uid="9.9")])
