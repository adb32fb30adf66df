"""Small synthetic dose grids and RT Dose files for the evaluation tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, RTDoseStorage, RTIonPlanStorage, generate_uid

from evaluation.dose import DoseGrid

PLAN_UID = "1.2.3.4.5"
FRAME_OF_REFERENCE_UID = "1.2.3.4.6"


def axis(start: float, step: float, count: int) -> np.ndarray:
    return start + step * np.arange(count)


def grid_of(
    dose: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    **identity: object,
) -> DoseGrid:
    """A grid holding ``dose(x, y, z)`` (Gy) at every voxel centre."""
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    values = {
        "frame_of_reference_uid": FRAME_OF_REFERENCE_UID,
        "referenced_plan_uid": PLAN_UID,
        "summation_type": "PLAN",
        "dose_type": "PHYSICAL",
    }
    values.update(identity)
    return DoseGrid(dose_gy=dose(xx, yy, zz), x_mm=x, y_mm=y, z_mm=z, **values)  # type: ignore[arg-type]


def blob(
    *, shift_x: float = 0.0, sigma: float = 8.0, peak: float = 2.0
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """A Gaussian dose cloud centred at (shift_x, 0, 0)."""

    def dose(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return peak * np.exp(-((x - shift_x) ** 2 + y**2 + z**2) / (2 * sigma**2))

    return dose


def rt_dose(
    dose_gy: np.ndarray,
    *,
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
    pixel_spacing: Sequence[float] = (2.0, 2.5),  # between rows (y), between columns (x)
    frame_offsets: Sequence[float] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
) -> FileDataset:
    """An RT Dose dataset holding ``dose_gy[frame, row, column]`` as 16-bit pixels."""
    frames, rows, columns = dose_gy.shape
    scaling = float(f"{dose_gy.max() / 65000:.6e}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTDoseStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("dose.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = RTDoseStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "RTDOSE"
    dataset.PatientID = "QA0042"
    dataset.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
    dataset.ImagePositionPatient = list(origin)
    dataset.ImageOrientationPatient = list(orientation)
    dataset.PixelSpacing = list(pixel_spacing)
    dataset.NumberOfFrames = frames
    dataset.FrameIncrementPointer = Tag("GridFrameOffsetVector")
    dataset.GridFrameOffsetVector = list(
        frame_offsets if frame_offsets is not None else [3.0 * i for i in range(frames)]
    )
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.DoseUnits = "GY"
    dataset.DoseType = "PHYSICAL"
    dataset.DoseSummationType = "BEAM"
    dataset.DoseGridScaling = scaling
    beam = Dataset()
    beam.ReferencedBeamNumber = 2
    group = Dataset()
    group.ReferencedFractionGroupNumber = 1
    group.ReferencedBeamSequence = DicomSequence([beam])
    plan = Dataset()
    plan.ReferencedSOPClassUID = RTIonPlanStorage
    plan.ReferencedSOPInstanceUID = PLAN_UID
    plan.ReferencedFractionGroupSequence = DicomSequence([group])
    dataset.ReferencedRTPlanSequence = DicomSequence([plan])
    dataset.PixelData = np.round(dose_gy / scaling).astype("<u2").tobytes()
    return dataset


def save(dataset: FileDataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path
