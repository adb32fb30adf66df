#!/usr/bin/env python3
"""Stand-in for the MOQUI Monte Carlo simulation: MOQUI input -> RT Dose DICOM.

    moquisim.py --case CASE_ID --gpu GPU_ID [--case-dir DIR] [--output-dir DIR]
                [--batches N] [--batch-seconds S]

Prints MOQUI's progress lines, flushed one by one, exactly as the real engine does::

    Generating particles for (1 of 10 batches)
    ...
    Generating particles for (10 of 10 batches)

(each line is printed when its batch starts; a batch takes ``--batch-seconds``), then
writes into the output directory:

    RTDOSE.dcm   RT Dose Storage, valid File Meta, a 16 x 12 x 10 dose grid (3 mm) with
                 DoseGridScaling, referencing the plan's SOPInstanceUID in
                 ReferencedRTPlanSequence and sharing its patient, study and frame of reference
    moqui.log    everything printed on stdout

It reads the interpreter's ``<output dir>/moqui_input/plan_summary.json``; without it
(moquisim run on its own) it reads the RTPLAN from the case folder and says so on stderr.
``--case-dir`` defaults to the current directory, ``--output-dir`` to
``<case dir>/output``.  Needs only the standard library and pydicom; the demo and the
tests run it with the project venv's python.

Exit codes: 0 done, 1 bad input (no plan), 2 bad arguments, N when asked to fail.

Behaviour switches for tests: a file of that name in the case folder, or else an
environment variable of that name (the file wins):

    MQI_FAIL_MOQUI    fail: content "N message" -> message on stderr, exit N (1-255);
                      empty -> exit 1 with a default message
    MQI_SLEEP_MOQUI   sleep this many seconds before starting (MQI_SLEEP: both tools)
    MQI_HANG_MOQUI    hang forever right after printing the first progress line
                      (MQI_HANG: both tools); killed by signal only

Sleep and fail apply before the simulation starts.  Every start, before anything else,
appends one line to ``<case dir>/.mqi_starts/moquisim``.
"""

from __future__ import annotations

import argparse
import array
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
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

TOOL = "moquisim"
SWITCH_SUFFIX = "MOQUI"
HANG_AT_START = False  # MOQUI hangs mid-simulation, after its first progress line
PLAN_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"}
DOSE_FILE = "RTDOSE.dcm"
COLUMNS, ROWS, FRAMES = 16, 12, 10
SPACING_MM = 3.0
_log: TextIO | None = None


class InputError(Exception):
    """The simulation has nothing to work on; the message says why (exit code 1)."""


def main(argv: list[str] | None = None) -> int:
    global _log  # one moqui.log per process, like the real engine's
    parser = argparse.ArgumentParser(description="MOQUI simulation stand-in")
    parser.add_argument("--case", required=True, help="case id")
    parser.add_argument("--gpu", required=True, type=_gpu_index, help="GPU index")
    parser.add_argument("--case-dir", type=Path, default=None, help="default: current dir")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: CASE_DIR/output")
    parser.add_argument("--batches", type=int, default=10, help="default 10")
    parser.add_argument("--batch-seconds", type=float, default=0.5, help="default 0.5")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.batch_seconds < 0:
        parser.error("--batches must be >= 1 and --batch-seconds >= 0")
    case_dir = (args.case_dir or Path.cwd()).absolute()
    output_dir = (args.output_dir or case_dir / "output").absolute()
    if not case_dir.is_dir():
        print(f"{TOOL}: case directory {case_dir} does not exist", file=sys.stderr)
        return 1
    record_start(case_dir, TOOL, args.case, args.gpu)
    failure = apply_switches(case_dir, SWITCH_SUFFIX)
    if failure is not None:
        return failure

    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / "moqui.log").open("w", encoding="utf-8") as log:
        _log = log
        say("MOQUI (stand-in) Monte Carlo dose engine")
        try:
            summary = load_summary(case_dir, output_dir)
        except InputError as exc:
            print(f"{TOOL}: {exc}", file=sys.stderr)
            log.write(f"ERROR: {exc}\n")
            return 1
        simulate(args, case_dir, summary)
        say(f"Writing dose to {DOSE_FILE}")
        write_dose(output_dir / DOSE_FILE, summary, args.case)
        say("MOQUI finished")
    return 0


def _gpu_index(value: str) -> int:
    if not value.isdecimal():
        raise argparse.ArgumentTypeError(f"GPU id must be a non-negative integer, not {value!r}")
    return int(value)


def say(line: str) -> None:
    print(line, flush=True)
    if _log is not None:
        _log.write(line + "\n")
        _log.flush()


def simulate(args: argparse.Namespace, case_dir: Path, summary: dict[str, Any]) -> None:
    say(f"Case {args.case!r}, plan {summary.get('plan_file')}, GPU {args.gpu}")
    say(f"Beams: {', '.join(str(beam['number']) for beam in summary['beams'])}")
    started = time.monotonic()
    for batch in range(1, args.batches + 1):
        say(f"Generating particles for ({batch} of {args.batches} batches)")
        if batch == 1 and wants_hang(case_dir, SWITCH_SUFFIX):
            hang()
        time.sleep(args.batch_seconds)
    say(f"Simulation finished in {time.monotonic() - started:.2f} s")


# --- switches and start marker (kept identical in interpreter.py) -----------------------------


def record_start(case_dir: Path, tool: str, case_id: str, gpu: int) -> None:
    """Append one line per start; O_APPEND keeps concurrent starts on separate lines."""
    marker_dir = case_dir / ".mqi_starts"
    marker_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    line = f"{stamp} pid={os.getpid()} case={case_id!r} gpu={gpu}\n".encode()
    fd = os.open(marker_dir / tool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def switch(case_dir: Path, name: str) -> str | None:
    """A switch's value: the file ``<case dir>/<name>`` if present, else the env var."""
    path = case_dir / name
    if path.is_file():
        return path.read_text(errors="replace").strip()
    return os.environ.get(name)


def apply_switches(case_dir: Path, suffix: str) -> int | None:
    """Sleep, hang or fail as requested; the exit code to fail with, or None to go on."""
    sleep = switch(case_dir, f"MQI_SLEEP_{suffix}") or switch(case_dir, "MQI_SLEEP")
    if sleep:
        try:
            seconds = float(sleep)
        except ValueError:
            print(f"{TOOL}: bad sleep switch value {sleep!r} (seconds)", file=sys.stderr)
            return 2
        say(f"sleeping {seconds:g} s on request")
        time.sleep(seconds)
    if HANG_AT_START and wants_hang(case_dir, suffix):
        hang()
    fail = switch(case_dir, f"MQI_FAIL_{suffix}")
    if fail is None:
        return None
    code, message = _failure(fail, f"MQI_FAIL_{suffix}")
    print(f"{TOOL}: {message}", file=sys.stderr, flush=True)
    return code


def wants_hang(case_dir: Path, suffix: str) -> bool:
    return _is_on(switch(case_dir, f"MQI_HANG_{suffix}")) or _is_on(switch(case_dir, "MQI_HANG"))


def hang() -> None:
    """Never return; like a stuck GPU job, only a signal ends the process."""
    print(f"{TOOL}: hanging on request", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


def _is_on(value: str | None) -> bool:
    # a switch file exists -> value "" -> on; an env var needs a true-ish value
    return value is not None and value.lower() not in ("0", "false", "no", "off")


def _failure(spec: str, name: str) -> tuple[int, str]:
    first, _, rest = spec.partition(" ")
    if first.isdecimal() and 1 <= int(first) <= 255:
        return int(first), rest.strip() or f"failing on request ({name})"
    return 1, spec or f"failing on request ({name})"


# --- input ------------------------------------------------------------------------------------


def load_summary(case_dir: Path, output_dir: Path) -> dict[str, Any]:
    """The interpreter's plan summary, or (run on its own) one read from the RTPLAN."""
    path = output_dir / "moqui_input" / "plan_summary.json"
    if path.is_file():
        say(f"Reading MOQUI input {path}")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
    print(
        f"{TOOL}: warning: no interpreter output in {path.parent}; reading the RTPLAN directly",
        file=sys.stderr,
    )
    return _summary_from_plan(case_dir, skip=output_dir)


def _summary_from_plan(case_dir: Path, *, skip: Path) -> dict[str, Any]:
    for folder, dirs, files in os.walk(case_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(folder, d) != skip)
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(".dcm"):
                continue
            try:
                plan = pydicom.dcmread(Path(folder, name), stop_before_pixels=True)
            except (InvalidDicomError, OSError):
                continue
            if plan.get("Modality") != "RTPLAN" and plan.get("SOPClassUID") not in (
                PLAN_SOP_CLASSES
            ):
                continue
            beams = plan.get("IonBeamSequence") or plan.get("BeamSequence") or []
            return {
                "plan_file": name,
                "sop_class_uid": str(plan.get("SOPClassUID", "")),
                "sop_instance_uid": str(plan.get("SOPInstanceUID", "")),
                "study_instance_uid": str(plan.get("StudyInstanceUID", "")),
                "frame_of_reference_uid": str(plan.get("FrameOfReferenceUID", "")),
                "patient_id": str(plan.get("PatientID", "")),
                "patient_name": str(plan.get("PatientName", "")),
                "beams": [{"number": int(beam.BeamNumber)} for beam in beams],
            }
    raise InputError(f"no MOQUI input and no RTPLAN DICOM file in {case_dir}")


# --- output -----------------------------------------------------------------------------------


def dose_grid(summary: dict[str, Any]) -> tuple[list[float], list[float]]:
    """A smooth dose cloud, one elongated Gaussian per beam along its gantry direction.

    Returns the voxel doses in Gy (frame-major, then row, then column) and the grid origin.
    Its maximum is the dose per fraction when the plan gives prescription and fractions.
    """
    beams = summary.get("beams") or [{}]
    isocenter = next((b["isocenter_mm"] for b in beams if b.get("isocenter_mm")), [0.0] * 3)
    origin = [
        isocenter[0] - SPACING_MM * (COLUMNS - 1) / 2,
        isocenter[1] - SPACING_MM * (ROWS - 1) / 2,
        isocenter[2] - SPACING_MM * (FRAMES - 1) / 2,
    ]
    angles = [math.radians(beam.get("gantry_angle") or 0.0) for beam in beams]
    directions = [(math.sin(angle), math.cos(angle)) for angle in angles]
    doses = []
    for frame in range(FRAMES):
        dz = origin[2] + frame * SPACING_MM - isocenter[2]
        for row in range(ROWS):
            dy = origin[1] + row * SPACING_MM - isocenter[1]
            for column in range(COLUMNS):
                dx = origin[0] + column * SPACING_MM - isocenter[0]
                total = 0.0
                for sin_g, cos_g in directions:
                    along = dx * sin_g + dy * cos_g
                    across_sq = dx * dx + dy * dy + dz * dz - along * along
                    total += math.exp(-(along**2) / 800.0 - across_sq / 200.0)
                doses.append(total)
    prescription, fractions = summary.get("prescription_gy"), summary.get("fractions")
    peak = prescription / fractions if prescription and fractions else 2.0
    highest = max(doses) or 1.0
    return [dose * peak / highest for dose in doses], origin


def write_dose(path: Path, summary: dict[str, Any], case_id: str) -> None:
    doses, origin = dose_grid(summary)
    # the stored (decimal string) scaling is the one the pixel values must be divided by
    scaling = float(format_number_as_ds(max(doses) / 65000 if max(doses) > 0 else 1.0))
    pixels = array.array("H", (round(dose / scaling) for dose in doses))
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
    dose.Manufacturer = "MOQUI (MQI Communicator stand-in)"
    dose.InstanceCreationDate = dose.ContentDate = now.strftime("%Y%m%d")
    dose.InstanceCreationTime = dose.ContentTime = now.strftime("%H%M%S")
    dose.PatientName = summary.get("patient_name", "")
    dose.PatientID = summary.get("patient_id", "")
    dose.PatientBirthDate = ""
    dose.PatientSex = ""
    dose.StudyInstanceUID = summary.get("study_instance_uid") or generate_uid()
    dose.StudyDate = dose.StudyTime = dose.ReferringPhysicianName = ""
    dose.StudyID = dose.AccessionNumber = ""
    dose.SeriesInstanceUID = generate_uid()
    dose.SeriesNumber = 1
    dose.SeriesDescription = f"MOQUI dose for case {case_id}"[:64]
    dose.InstanceNumber = 1
    dose.FrameOfReferenceUID = summary.get("frame_of_reference_uid") or generate_uid()
    dose.PositionReferenceIndicator = ""
    dose.ImagePositionPatient = [round(value, 3) for value in origin]
    dose.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dose.SamplesPerPixel = 1
    dose.PhotometricInterpretation = "MONOCHROME2"
    dose.NumberOfFrames = FRAMES
    dose.FrameIncrementPointer = Tag("GridFrameOffsetVector")
    dose.Rows, dose.Columns = ROWS, COLUMNS
    dose.PixelSpacing = [SPACING_MM, SPACING_MM]
    dose.SliceThickness = SPACING_MM
    dose.BitsAllocated = dose.BitsStored = 16
    dose.HighBit = 15
    dose.PixelRepresentation = 0
    dose.DoseUnits = "GY"
    dose.DoseType = "PHYSICAL"
    dose.DoseSummationType = "PLAN"
    dose.TissueHeterogeneityCorrection = "IMAGE"
    dose.GridFrameOffsetVector = [frame * SPACING_MM for frame in range(FRAMES)]
    dose.DoseGridScaling = format_number_as_ds(scaling)
    reference = Dataset()
    reference.ReferencedSOPClassUID = summary.get("sop_class_uid") or RTIonPlanStorage
    reference.ReferencedSOPInstanceUID = summary["sop_instance_uid"]
    dose.ReferencedRTPlanSequence = Sequence([reference])
    dose.PixelData = pixels.tobytes()

    partial = path.with_name(f".{path.name}.partial")
    dose.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
