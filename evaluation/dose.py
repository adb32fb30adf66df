"""RT Dose DICOM -> ``DoseGrid``: the dose in Gy on its grid, with coordinates in mm.

A grid is read only when it can be compared safely: the file must be an RT Dose holding a
3D dose grid in Gy on an axial orientation, with the geometry attributes that place it in
the patient (ImagePositionPatient, PixelSpacing, GridFrameOffsetVector).  Anything else is
refused with a ``DoseFileError`` whose message says what is wrong and what to do, because
a dose misread (wrong units, transposed axes, scrambled frames) gives a QA verdict that
looks right and is not.

Array and axes: ``dose_gy[frame, row, column]``; ``x_mm`` per column, ``y_mm`` per row,
``z_mm`` per frame, each strictly increasing (a grid stored with decreasing coordinates,
e.g. a prone patient's, is flipped on reading), in the DICOM patient coordinate system.

Memory is bounded: the voxel count is checked from the header, before the pixel data is
read, against ``max_voxels`` (``DEFAULT_MAX_VOXELS`` unless the caller configures another).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import RTDoseStorage

DEFAULT_MAX_VOXELS = 8_000_000  # 200^3: 64 MB as float64, per grid
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# The two axial orientations whose frame normal (row x column direction) is +z: the usual
# one and the one a prone patient's dose is often stored in.
AXIAL_ORIENTATIONS = ((1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0))
_TOLERANCE_MM = 1e-3


class DoseFileError(ValueError):
    """An RT Dose that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True, eq=False)
class DoseGrid:
    """A dose grid in Gy; ``dose_gy[frame, row, column]`` at ``(x_mm, y_mm, z_mm)``."""

    dose_gy: np.ndarray
    x_mm: np.ndarray
    y_mm: np.ndarray
    z_mm: np.ndarray
    frame_of_reference_uid: str = ""
    referenced_plan_uid: str = ""
    referenced_beam_numbers: tuple[int, ...] = ()
    summation_type: str = ""  # PLAN, BEAM, FRACTION, ... (DoseSummationType)
    dose_type: str = ""  # PHYSICAL or EFFECTIVE (RBE-weighted) (DoseType)
    patient_id: str = ""
    source: str = ""  # where it came from, for messages (a file name)

    def __post_init__(self) -> None:
        axes = (self.z_mm, self.y_mm, self.x_mm)
        if self.dose_gy.ndim != 3 or self.dose_gy.shape != tuple(len(a) for a in axes):
            raise ValueError(
                f"dose array of shape {self.dose_gy.shape} does not match the axes "
                f"(z {len(self.z_mm)}, y {len(self.y_mm)}, x {len(self.x_mm)})"
            )
        for name, axis in zip("zyx", axes, strict=True):
            if axis.ndim != 1 or (len(axis) > 1 and not np.all(np.diff(axis) > 0)):
                raise ValueError(f"the {name} coordinates must be strictly increasing")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, rows, columns)."""
        return self.dose_gy.shape  # type: ignore[return-value]

    @property
    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The coordinates in array order (z, y, x), as pymedphys takes them."""
        return (self.z_mm, self.y_mm, self.x_mm)

    @property
    def voxel_count(self) -> int:
        return int(self.dose_gy.size)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(x, y, z) voxel spacing; the median step of each axis, 0 for a single plane."""
        return (_step(self.x_mm), _step(self.y_mm), _step(self.z_mm))


@dataclass(frozen=True)
class DoseSummary:
    """What a physicist reads first about a dose grid."""

    max_dose_gy: float
    max_position_mm: tuple[float, float, float]  # x, y, z
    max_index: tuple[int, int, int]  # frame, row, column
    shape: tuple[int, int, int]  # frames, rows, columns
    spacing_mm: tuple[float, float, float]  # x, y, z

    def describe(self) -> str:
        x, y, z = self.max_position_mm
        frames, rows, columns = self.shape
        dx, dy, dz = self.spacing_mm
        return (
            f"max {self.max_dose_gy:.3f} Gy at ({x:.1f}, {y:.1f}, {z:.1f}) mm; "
            f"grid {columns} x {rows} x {frames} voxels of {dx:g} x {dy:g} x {dz:g} mm"
        )


def read_dose(path: str | os.PathLike[str], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> DoseGrid:
    """Read an RT Dose file; ``DoseFileError`` says why a file cannot be used."""
    name = Path(path).name
    try:
        # large values (the pixel data) stay on disk until the voxel count was checked
        dataset = pydicom.dcmread(path, defer_size="256 KB")
    except InvalidDicomError:
        raise DoseFileError(
            f"{name} is not a DICOM file; give the RT Dose (RD*.dcm) exported for the plan"
        ) from None
    except (OSError, EOFError, ValueError) as exc:
        raise DoseFileError(f"{name} cannot be read as DICOM ({exc}); export it again") from None
    return dose_from_dataset(dataset, source=name, max_voxels=max_voxels)


def is_rt_dose(path: str | os.PathLike[str]) -> bool:
    """Whether the file is an RT Dose, from its header only; ``DoseFileError`` when it is
    not readable DICOM at all."""
    name = Path(path).name
    try:
        header = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"]
        )
    except InvalidDicomError:
        raise DoseFileError(f"{name} is not a DICOM file") from None
    except (OSError, EOFError, ValueError) as exc:
        raise DoseFileError(f"{name} cannot be read as DICOM ({exc})") from None
    return header.get("Modality") == "RTDOSE" or header.get("SOPClassUID") == RTDoseStorage


def dose_from_dataset(
    dataset: pydicom.Dataset, *, source: str = "", max_voxels: int = DEFAULT_MAX_VOXELS
) -> DoseGrid:
    """A ``DoseGrid`` from an RT Dose dataset already read (see ``read_dose``)."""
    name = source or "the dose"
    _check_is_a_dose_grid(dataset, name)
    frames, rows, columns = _dimensions(dataset, name)
    if frames * rows * columns > max_voxels:
        raise DoseFileError(
            f"{name}: the dose grid has {columns} x {rows} x {frames} = "
            f"{frames * rows * columns:,} voxels, more than the configured limit of "
            f"{max_voxels:,}; export the dose on a coarser grid, or raise the limit"
        )
    flip_x, flip_y = _orientation(dataset, name)
    x0, y0, z0 = _numbers(dataset, "ImagePositionPatient", 3, name)
    row_spacing, column_spacing = _numbers(dataset, "PixelSpacing", 2, name)
    if row_spacing <= 0 or column_spacing <= 0:
        raise DoseFileError(f"{name}: PixelSpacing {[row_spacing, column_spacing]} is not positive")
    x = x0 + column_spacing * np.arange(columns) * (-1 if flip_x else 1)
    y = y0 + row_spacing * np.arange(rows) * (-1 if flip_y else 1)
    z = _frame_positions(dataset, frames, z0, name)
    dose = _dose_values(dataset, (frames, rows, columns), name)
    if flip_x:
        x, dose = x[::-1], dose[:, :, ::-1]
    if flip_y:
        y, dose = y[::-1], dose[:, ::-1, :]
    if len(z) > 1 and z[1] < z[0]:
        z, dose = z[::-1], dose[::-1, :, :]
    return DoseGrid(
        dose_gy=np.ascontiguousarray(dose),
        x_mm=np.ascontiguousarray(x),
        y_mm=np.ascontiguousarray(y),
        z_mm=np.ascontiguousarray(z),
        frame_of_reference_uid=str(dataset.get("FrameOfReferenceUID", "")),
        referenced_plan_uid=_referenced_plan(dataset),
        referenced_beam_numbers=_referenced_beams(dataset),
        summation_type=str(dataset.get("DoseSummationType", "")),
        dose_type=str(dataset.get("DoseType", "")),
        patient_id=str(dataset.get("PatientID", "")),
        source=source,
    )


def summarize_dose(grid: DoseGrid) -> DoseSummary:
    """The maximum dose and where it is, the grid's size and spacing."""
    frame, row, column = np.unravel_index(int(np.argmax(grid.dose_gy)), grid.shape)
    return DoseSummary(
        max_dose_gy=float(grid.dose_gy[frame, row, column]),
        max_position_mm=(float(grid.x_mm[column]), float(grid.y_mm[row]), float(grid.z_mm[frame])),
        max_index=(int(frame), int(row), int(column)),
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
    )


# --- checks -----------------------------------------------------------------------------------


def _check_is_a_dose_grid(dataset: pydicom.Dataset, name: str) -> None:
    modality = str(dataset.get("Modality", "") or "")
    if modality != "RTDOSE" and dataset.get("SOPClassUID") != RTDoseStorage:
        found = f"Modality {modality}" if modality else "no Modality"
        raise DoseFileError(
            f"{name} is not an RT Dose ({found}); give the RT Dose file (RD*.dcm) of the plan"
        )
    if not any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS):
        raise DoseFileError(
            f"{name} is an RT Dose without a dose grid (no Pixel Data), perhaps a DVH or "
            "point-dose export; export the 3D dose grid of the plan"
        )
    units = str(dataset.get("DoseUnits", "") or "")
    if units.upper() != "GY":
        raise DoseFileError(
            f"{name} holds doses in {units or 'unstated'} units (DoseUnits), not Gy; "
            "export the dose in absolute Gy"
        )


def _dimensions(dataset: pydicom.Dataset, name: str) -> tuple[int, int, int]:
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError):
        raise DoseFileError(f"{name} does not say its grid size (Rows, Columns)") from None
    if min(frames, rows, columns) < 1:
        raise DoseFileError(f"{name}: empty dose grid ({columns} x {rows} x {frames})")
    return frames, rows, columns


def _orientation(dataset: pydicom.Dataset, name: str) -> tuple[bool, bool]:
    """Whether the x and the y axis run backwards; refuses any non-axial orientation."""
    if "ImageOrientationPatient" not in dataset:
        raise DoseFileError(
            f"{name} has no ImageOrientationPatient, so its axes are unknown; export it again"
        )
    cosines = [float(value) for value in dataset.ImageOrientationPatient]
    for axial in AXIAL_ORIENTATIONS:
        if len(cosines) == 6 and all(
            math.isclose(a, b, abs_tol=1e-4) for a, b in zip(cosines, axial, strict=True)
        ):
            return axial[0] < 0, axial[4] < 0
    shown = "\\".join(f"{value:g}" for value in cosines)
    raise DoseFileError(
        f"{name} has a non-axial orientation (ImageOrientationPatient {shown}); only axial "
        "dose grids (1\\0\\0\\0\\1\\0) are supported: export the dose on an axial grid"
    )


def _numbers(dataset: pydicom.Dataset, keyword: str, count: int, name: str) -> list[float]:
    values = dataset.get(keyword)
    try:
        numbers = [float(value) for value in values]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != count or not all(math.isfinite(value) for value in numbers):
        raise DoseFileError(
            f"{name} has no usable {keyword} ({count} numbers expected), so the grid cannot "
            "be placed in the patient; export it again"
        )
    return numbers


def _frame_positions(dataset: pydicom.Dataset, frames: int, z0: float, name: str) -> np.ndarray:
    """Each frame's z from GridFrameOffsetVector, relative (first 0) or absolute (first z0)."""
    offsets = dataset.get("GridFrameOffsetVector")
    if offsets is None:
        if frames == 1:
            return np.array([z0])
        raise DoseFileError(
            f"{name} has {frames} frames but no GridFrameOffsetVector, so where each frame "
            "lies is unknown; export it again"
        )
    values = np.array([float(value) for value in offsets])
    if len(values) != frames:
        raise DoseFileError(
            f"{name}: GridFrameOffsetVector has {len(values)} values for {frames} frames"
        )
    if math.isclose(values[0], 0.0, abs_tol=_TOLERANCE_MM):
        z = z0 + values
    elif math.isclose(values[0], z0, abs_tol=_TOLERANCE_MM):
        z = values  # absolute positions, which DICOM allows when the first equals z0
    else:
        raise DoseFileError(
            f"{name}: GridFrameOffsetVector starts at {values[0]:g}, neither 0 (relative) nor "
            f"the grid's z {z0:g} (absolute); the frames' positions are ambiguous"
        )
    steps = np.diff(z)
    if len(steps) and not (np.all(steps > 0) or np.all(steps < 0)):
        raise DoseFileError(
            f"{name}: the frames' z positions (GridFrameOffsetVector) are not in order"
        )
    return z


def _dose_values(dataset: pydicom.Dataset, shape: tuple[int, int, int], name: str) -> np.ndarray:
    scaling = dataset.get("DoseGridScaling")
    try:
        factor = float(scaling)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        factor = math.nan
    if not (factor > 0 and math.isfinite(factor)):
        raise DoseFileError(
            f"{name} has no positive DoseGridScaling, so its pixel values cannot be turned "
            "into Gy; export it again"
        )
    try:
        pixels = dataset.pixel_array
    except (AttributeError, ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        meta = getattr(dataset, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID", "") if meta else ""
        raise DoseFileError(
            f"{name}: its pixel data cannot be decoded ({exc}); export the dose uncompressed"
            + (f" (transfer syntax {syntax})" if syntax else "")
        ) from None
    if pixels.size != shape[0] * shape[1] * shape[2]:
        raise DoseFileError(
            f"{name}: {pixels.size} pixel values for a {shape[2]} x {shape[1]} x {shape[0]} grid"
        )
    return pixels.reshape(shape).astype(np.float64) * factor


def _referenced_plan(dataset: pydicom.Dataset) -> str:
    for reference in dataset.get("ReferencedRTPlanSequence") or []:
        return str(reference.get("ReferencedSOPInstanceUID", ""))
    return ""


def _referenced_beams(dataset: pydicom.Dataset) -> tuple[int, ...]:
    numbers = []
    for plan in dataset.get("ReferencedRTPlanSequence") or []:
        for group in plan.get("ReferencedFractionGroupSequence") or []:
            for beam in group.get("ReferencedBeamSequence") or []:
                if "ReferencedBeamNumber" in beam:
                    numbers.append(int(beam.ReferencedBeamNumber))
    return tuple(sorted(set(numbers)))


def _step(axis: np.ndarray) -> float:
    return float(np.median(np.diff(axis))) if len(axis) > 1 else 0.0
