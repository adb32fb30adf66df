"""The QA verdict on the stand-ins' doses: sample cases -> interpreter -> MOQUI -> gamma.

The stand-ins run as subprocesses, as the workflow runs them; a normal sample's MOQUI
dose (from its delivery logs) passes against its planning system's dose, the failing
sample's (beam 2 delivered 15 % too many MU) does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.dose import DoseGrid, read_dose
from evaluation.gamma import gamma_analysis, sum_doses

STANDINS = Path(__file__).resolve().parents[2] / "hpc_standins"


def run(tool: str, *args: str | Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MQI_")}
    result = subprocess.run(
        [sys.executable, str(STANDINS / tool), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{tool} {args}: {result.stderr}"


def simulate(case: Path, output: Path, *extra: str | Path) -> Path:
    run(
        "moquisim.py", "--case", case.name, "--gpu", "0", "--case-dir", case,
        "--output-dir", output, "--batches", "1", "--batch-seconds", "0", *extra,
    )  # fmt: skip
    return output / "RTDOSE.dcm"


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case's folder, after the interpreter and a whole-plan MOQUI run."""
    incoming = tmp_path_factory.mktemp("incoming")
    run("make_sample_cases.py", incoming, "--count", "1", "--with-failing-dose")
    folders = {}
    for name in ("case-001", "case-qa-fail"):
        case = incoming / name
        run("interpreter.py", "--case", name, "--gpu", "0", "--case-dir", case)
        simulate(case, case / "output")
        folders[name] = case
    return folders


def doses(case: Path) -> tuple[DoseGrid, DoseGrid]:
    return read_dose(case / "RD.tps.dcm"), read_dose(case / "output" / "RTDOSE.dcm")


def test_the_sample_cases_moqui_dose_passes_against_its_tps_dose(cases: dict[str, Path]) -> None:
    tps, moqui = doses(cases["case-001"])

    result = gamma_analysis(tps, moqui, criteria=[(3, 2), (2, 2)])

    assert result.passed, result.describe()
    assert all(c.pass_rate_percent >= 98 for c in result.criteria), result.describe()
    assert result.criteria[0].points_outside_evaluated_grid == 0
    # the two grids differ: the planning system's is coarser and lies inside MOQUI's
    assert (tps.shape, moqui.shape) == ((23, 29, 29), (31, 41, 41))
    assert (tps.spacing_mm, moqui.spacing_mm) == ((2.5, 2.5, 2.5), (2.0, 2.0, 2.0))


def test_the_failing_sample_fails(cases: dict[str, Path]) -> None:
    tps, moqui = doses(cases["case-qa-fail"])

    result = gamma_analysis(tps, moqui, criteria=[(3, 2)])

    assert not result.passed, result.describe()
    assert result.criteria[0].pass_rate_percent < 95
    assert result.describe().startswith("FAILED")


def test_both_doses_are_of_the_same_plan_patient_and_frame(cases: dict[str, Path]) -> None:
    tps, moqui = doses(cases["case-001"])

    assert tps.referenced_plan_uid == moqui.referenced_plan_uid != ""
    assert tps.frame_of_reference_uid == moqui.frame_of_reference_uid != ""
    assert tps.patient_id == moqui.patient_id == "QA0001"


def test_the_beams_simulated_apart_add_up_to_the_plan_dose(
    cases: dict[str, Path], tmp_path: Path
) -> None:
    case = cases["case-001"]
    beams = [
        read_dose(
            simulate(case, tmp_path / f"beam{n}", "--beam", str(n), "--input-dir", case / "output")
        )
        for n in (1, 2)
    ]
    _, whole = doses(case)

    total = sum_doses(beams)

    assert [beam.summation_type for beam in beams] == ["BEAM", "BEAM"]
    assert total.referenced_beam_numbers == (1, 2)
    # each file stores its dose in steps of its maximum / 65000
    step = sum(beam.dose_gy.max() for beam in beams) / 65000 + whole.dose_gy.max() / 65000
    np.testing.assert_allclose(total.dose_gy, whole.dose_gy, rtol=0, atol=step)
    tps, _ = doses(case)
    assert gamma_analysis(tps, total).passed
