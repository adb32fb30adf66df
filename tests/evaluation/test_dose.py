"""Reading RT Dose files into dose grids, and refusing those that cannot be compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from evaluation.dose import DoseFileError, is_rt_dose, read_dose, summarize_dose
from tests.evaluation.grids import FRAME_OF_REFERENCE_UID, PLAN_UID, rt_dose, save

pytestmark = pytest.mark.pure


def ramp(frames: int = 4, rows: int = 3, columns: int = 5) -> np.ndarray:
    """Distinct doses: 0.01 Gy * (100 * frame + 10 * row + column), max at the last voxel."""
    f, r, c = np.meshgrid(range(frames), range(rows), range(columns), indexing="ij")
    return 0.01 * (100 * f + 10 * r + c)


def test_it_reads_the_dose_in_gy_with_its_coordinates(tmp_path: Path) -> None:
    path = save(rt_dose(ramp()), tmp_path / "RD.dcm")

    grid = read_dose(path)

    assert grid.shape == (4, 3, 5)
    np.testing.assert_allclose(grid.dose_gy, ramp(), atol=ramp().max() / 65000)
    np.testing.assert_allclose(grid.x_mm, [-10, -7.5, -5, -2.5, 0])  # column spacing 2.5
    np.testing.assert_allclose(grid.y_mm, [-20, -18, -16])  # row spacing 2
    np.testing.assert_allclose(grid.z_mm, [30, 33, 36, 39])  # relative frame offsets
    assert grid.spacing_mm == (2.5, 2.0, 3.0)
    assert grid.referenced_plan_uid == PLAN_UID
    assert grid.frame_of_reference_uid == FRAME_OF_REFERENCE_UID
    assert grid.referenced_beam_numbers == (2,)
    assert (grid.summation_type, grid.dose_type, grid.patient_id) == ("BEAM", "PHYSICAL", "QA0042")
    assert grid.source == "RD.dcm"


def test_the_summary_says_where_the_maximum_is(tmp_path: Path) -> None:
    grid = read_dose(save(rt_dose(ramp()), tmp_path / "RD.dcm"))

    summary = summarize_dose(grid)

    assert summary.max_dose_gy == pytest.approx(3.24, abs=1e-4)
    assert summary.max_index == (3, 2, 4)
    assert summary.max_position_mm == (0.0, -16.0, 39.0)
    assert summary.shape == (4, 3, 5)
    assert summary.describe() == (
        "max 3.240 Gy at (0.0, -16.0, 39.0) mm; grid 5 x 3 x 4 voxels of 2.5 x 2 x 3 mm"
    )


def test_absolute_frame_offsets_are_positions(tmp_path: Path) -> None:
    dataset = rt_dose(ramp(), frame_offsets=[30.0, 32.0, 34.0, 36.0])

    grid = read_dose(save(dataset, tmp_path / "RD.dcm"))

    np.testing.assert_allclose(grid.z_mm, [30, 32, 34, 36])


def test_a_grid_stored_backwards_is_flipped_to_increasing_coordinates(tmp_path: Path) -> None:
    # a prone patient's dose: x and y run backwards, frames from superior to inferior
    dataset = rt_dose(ramp(), orientation=(-1, 0, 0, 0, -1, 0), frame_offsets=[0, -3, -6, -9])

    grid = read_dose(save(dataset, tmp_path / "RD.dcm"))

    np.testing.assert_allclose(grid.x_mm, [-20, -17.5, -15, -12.5, -10])
    np.testing.assert_allclose(grid.y_mm, [-24, -22, -20])
    np.testing.assert_allclose(grid.z_mm, [21, 24, 27, 30])
    # the voxel stored first (dose 0) lies at the largest x, y and z
    assert grid.dose_gy[-1, -1, -1] == 0
    assert summarize_dose(grid).max_position_mm == (-20.0, -24.0, 21.0)


def test_it_refuses_a_file_that_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "RD.dcm"
    path.write_text("%PDF-1.4 the dose report\n")

    with pytest.raises(DoseFileError, match=r"RD\.dcm is not a DICOM file"):
        read_dose(path)


def test_it_refuses_a_dicom_file_that_is_not_an_rt_dose() -> None:
    with pytest.raises(DoseFileError, match=r"rtplan\.dcm is not an RT Dose \(Modality RTPLAN\)"):
        read_dose(get_testdata_file("rtplan.dcm"))


def test_it_refuses_an_rt_dose_without_pixel_data(tmp_path: Path) -> None:
    dataset = rt_dose(ramp())
    del dataset.PixelData

    with pytest.raises(DoseFileError, match="without a dose grid \\(no Pixel Data\\)"):
        read_dose(save(dataset, tmp_path / "RD.dcm"))


def test_it_refuses_a_non_axial_orientation(tmp_path: Path) -> None:
    coronal = (1, 0, 0, 0, 0, -1)
    path = save(rt_dose(ramp(), orientation=coronal), tmp_path / "RD.dcm")

    with pytest.raises(DoseFileError) as refused:
        read_dose(path)

    assert "non-axial orientation (ImageOrientationPatient 1\\0\\0\\0\\0\\-1)" in str(refused.value)
    assert "export the dose on an axial grid" in str(refused.value)


def test_it_refuses_a_grid_above_the_voxel_cap_before_reading_it(tmp_path: Path) -> None:
    path = save(rt_dose(ramp()), tmp_path / "RD.dcm")

    with pytest.raises(DoseFileError) as refused:
        read_dose(path, max_voxels=59)

    assert str(refused.value) == (
        "RD.dcm: the dose grid has 5 x 3 x 4 = 60 voxels, more than the configured limit of "
        "59; export the dose on a coarser grid, or raise the limit"
    )
    assert read_dose(path, max_voxels=60).voxel_count == 60


def test_it_refuses_relative_doses(tmp_path: Path) -> None:
    dataset = rt_dose(ramp())
    dataset.DoseUnits = "RELATIVE"

    with pytest.raises(DoseFileError, match="doses in RELATIVE units \\(DoseUnits\\), not Gy"):
        read_dose(save(dataset, tmp_path / "RD.dcm"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: delattr(d, "DoseGridScaling"), "no positive DoseGridScaling"),
        (lambda d: delattr(d, "GridFrameOffsetVector"), "no GridFrameOffsetVector"),
        (lambda d: setattr(d, "GridFrameOffsetVector", [5, 8, 11, 14]), "ambiguous"),
        (lambda d: setattr(d, "GridFrameOffsetVector", [0, 3, 1, 6]), "not in order"),
        (lambda d: delattr(d, "PixelSpacing"), "no usable PixelSpacing"),
        (lambda d: delattr(d, "ImagePositionPatient"), "no usable ImagePositionPatient"),
    ],
)
def test_it_refuses_a_grid_it_cannot_place(tmp_path: Path, change, message: str) -> None:
    dataset = rt_dose(ramp())
    change(dataset)

    with pytest.raises(DoseFileError, match=message):
        read_dose(save(dataset, tmp_path / "RD.dcm"))


def test_an_rt_dose_is_told_from_its_header_and_other_dicom_is_not_one(tmp_path):
    dose = save(rt_dose(np.ones((2, 3, 4))), tmp_path / "RD.dcm")
    plan = Path(get_testdata_file("rtplan.dcm"))
    report = tmp_path / "RD.report.dcm"
    report.write_text("%PDF-1.4 not DICOM at all\n")

    assert is_rt_dose(dose)
    assert not is_rt_dose(plan)
    with pytest.raises(DoseFileError, match=r"RD\.report\.dcm is not a DICOM file"):
        is_rt_dose(report)
