"""PNG pictures of doses and gamma maps."""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from evaluation.dose import DoseGrid
from evaluation.gamma import CriterionResult, gamma_analysis
from evaluation.picture import cache_key, dose_picture, dose_thumbnail, gamma_picture
from tests.evaluation.grids import axis, blob, grid_of


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def dose() -> DoseGrid:
    # not a cube: 20 columns of 2 mm, 12 rows of 3 mm, 8 frames of 2.5 mm
    return grid_of(blob(shift_x=4, sigma=7), axis(-20, 2, 20), axis(-18, 3, 12), axis(-9, 2.5, 8))


@pytest.fixture(scope="module")
def gamma(dose: DoseGrid) -> CriterionResult:
    shifted = grid_of(blob(shift_x=7, sigma=7), dose.x_mm, dose.y_mm, dose.z_mm)
    return gamma_analysis(dose, shifted, criteria=[(3, 2)]).criteria[0]


def test_the_dose_picture_is_a_png_of_the_size_asked(dose: DoseGrid) -> None:
    assert png_size(dose_picture(dose)) == (1200, 440)
    assert png_size(dose_picture(dose, width_px=900, height_px=330, title="RD.tps.dcm")) == (
        900,
        330,
    )


def test_the_thumbnail_is_small(dose: DoseGrid) -> None:
    assert png_size(dose_thumbnail(dose)) == (160, 60)


def test_the_gamma_picture_is_a_png_of_the_size_asked(
    dose: DoseGrid, gamma: CriterionResult
) -> None:
    assert not gamma.passed

    assert png_size(gamma_picture(dose, gamma)) == (1200, 440)


def test_a_gamma_map_is_drawn_only_on_its_reference_grid(
    dose: DoseGrid, gamma: CriterionResult
) -> None:
    other = grid_of(blob(), axis(0, 2, 5), axis(0, 2, 5), axis(0, 2, 5))

    with pytest.raises(ValueError, match="draw it with the reference dose it was computed on"):
        gamma_picture(other, gamma)


def test_pictures_drawn_in_parallel_threads_equal_those_drawn_alone(
    dose: DoseGrid, gamma: CriterionResult
) -> None:
    alone = [dose_picture(dose), gamma_picture(dose, gamma), dose_thumbnail(dose)]
    jobs = [
        (dose_picture, (dose,)),
        (gamma_picture, (dose, gamma)),
        (dose_thumbnail, (dose,)),
    ] * 4

    with ThreadPoolExecutor(max_workers=6) as pool:
        drawn = list(pool.map(lambda job: job[0](*job[1]), jobs))

    assert drawn == alone * 4


def test_the_cache_key_follows_the_files_and_the_variant(tmp_path: Path) -> None:
    reference, evaluated = tmp_path / "RD.tps.dcm", tmp_path / "RTDOSE.dcm"
    reference.write_bytes(b"tps dose")
    evaluated.write_bytes(b"moqui dose")
    first = cache_key([reference, evaluated], variant="gamma 3%/2mm")

    assert cache_key([reference, evaluated], variant="gamma 3%/2mm") == first
    assert cache_key([reference, evaluated], variant="gamma 2%/2mm") != first
    assert cache_key([evaluated, reference], variant="gamma 3%/2mm") != first
    stat = evaluated.stat()
    evaluated.write_bytes(b"MOQUI dose")  # same size; mtime kept: only the content differs
    os.utime(evaluated, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_key([reference, evaluated], variant="gamma 3%/2mm") != first


def test_an_empty_dose_is_still_drawn() -> None:
    empty = grid_of(lambda x, y, z: 0 * x, axis(0, 2, 4), axis(0, 2, 3), axis(0, 2, 2))

    assert png_size(dose_picture(empty)) == (1200, 440)
    assert np.max(empty.dose_gy) == 0
