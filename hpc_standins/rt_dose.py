"""Write a dose grid as an RT Dose DICOM file, as MOQUI and a planning system export it.

Shared by the MOQUI stand-in (``RTDOSE.dcm``) and the sample generator (``RD.tps.dcm``).
The file has a valid File Meta, 16-bit pixels with DoseGridScaling, an axial orientation,
relative GridFrameOffsetVector, and references the plan (ReferencedRTPlanSequence; for a
single beam's dose also the beam, with DoseSummationType BEAM), sharing its patient,
study and frame of reference.  Standard library and pydicom only.
"""

from __future__ import annotations

import array
import datetime as dt
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pencil_beam import Grid
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    RTDoseStorage,
    RTIonPlanStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds


def write_rt_dose(
    path: Path,
    doses: list[float],
    grid: Grid,
    *,
    plan: Mapping[str, Any],
    manufacturer: str,
    series_description: str,
    beam_number: int | None = None,
) -> None:
    """Write ``doses`` (Gy, frame-major, then row, then column) atomically to ``path``.

    ``plan`` holds the plan's identity as the interpreter's summary names it
    (``sop_instance_uid``, ``sop_class_uid``, ``patient_id``, ``patient_name``,
    ``study_instance_uid``, ``frame_of_reference_uid``).
    """
    highest = max(doses, default=0.0)
    # the stored (decimal string) scaling is the one the pixel values must be divided by
    scaling = float(format_number_as_ds(highest / 65000 if highest > 0 else 1.0))
    pixels = array.array("H", (max(0, round(dose / scaling)) for dose in doses))
    if sys.byteorder == "big":
        pixels.byteswap()  # DICOM Explicit VR Little Endian

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTDoseStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MQI_STANDIN_1"
    dose = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = dt.datetime.now()
    dose.SOPClassUID = RTDoseStorage
    dose.SOPInstanceUID = sop_uid
    dose.Modality = "RTDOSE"
    dose.Manufacturer = manufacturer
    dose.InstanceCreationDate = dose.ContentDate = now.strftime("%Y%m%d")
    dose.InstanceCreationTime = dose.ContentTime = now.strftime("%H%M%S")
    dose.PatientName = plan.get("patient_name", "")
    dose.PatientID = plan.get("patient_id", "")
    dose.PatientBirthDate = ""
    dose.PatientSex = ""
    dose.StudyInstanceUID = plan.get("study_instance_uid") or generate_uid()
    dose.StudyDate = dose.StudyTime = dose.ReferringPhysicianName = ""
    dose.StudyID = dose.AccessionNumber = ""
    dose.SeriesInstanceUID = generate_uid()
    dose.SeriesNumber = 1
    dose.SeriesDescription = series_description[:64]
    dose.InstanceNumber = 1
    dose.FrameOfReferenceUID = plan.get("frame_of_reference_uid") or generate_uid()
    dose.PositionReferenceIndicator = ""
    dose.ImagePositionPatient = [format_number_as_ds(value) for value in grid.origin_mm]
    dose.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dose.SamplesPerPixel = 1
    dose.PhotometricInterpretation = "MONOCHROME2"
    dose.NumberOfFrames = grid.frames
    dose.FrameIncrementPointer = Tag("GridFrameOffsetVector")
    dose.Rows, dose.Columns = grid.rows, grid.columns
    dose.PixelSpacing = [grid.spacing_mm, grid.spacing_mm]
    dose.SliceThickness = grid.spacing_mm
    dose.BitsAllocated = dose.BitsStored = 16
    dose.HighBit = 15
    dose.PixelRepresentation = 0
    dose.DoseUnits = "GY"
    dose.DoseType = "PHYSICAL"
    dose.DoseSummationType = "PLAN" if beam_number is None else "BEAM"
    dose.TissueHeterogeneityCorrection = "IMAGE"
    dose.GridFrameOffsetVector = [
        format_number_as_ds(frame * grid.spacing_mm) for frame in range(grid.frames)
    ]
    dose.DoseGridScaling = format_number_as_ds(scaling)
    dose.ReferencedRTPlanSequence = Sequence([_plan_reference(plan, beam_number)])
    dose.PixelData = pixels.tobytes()

    partial = path.with_name(f".{path.name}.partial")
    dose.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


def _plan_reference(plan: Mapping[str, Any], beam_number: int | None) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = plan.get("sop_class_uid") or RTIonPlanStorage
    reference.ReferencedSOPInstanceUID = plan["sop_instance_uid"]
    if beam_number is not None:  # required with DoseSummationType BEAM
        beam = Dataset()
        beam.ReferencedBeamNumber = beam_number
        group = Dataset()
        group.ReferencedFractionGroupNumber = 1
        group.ReferencedBeamSequence = Sequence([beam])
        reference.ReferencedFractionGroupSequence = Sequence([group])
    return reference
