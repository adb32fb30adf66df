#!/usr/bin/env python3
"""Build demo QA case folders from the real RTPLAN that ships with pydicom.

    make_sample_cases.py OUT_DIR [--count N] [--with-invalid] [--with-failing-dose] [--seed S]
                         [--beams N]

Needs only the standard library and pydicom (the demo runs it with the project venv's
python: ``.venv/bin/python hpc_standins/make_sample_cases.py var/demo/incoming``).

pydicom's ``rtplan.dcm`` test file (bundled in the wheel, no download) is a photon plan.
Each case keeps its patient, study, dose-reference, fraction-group and setup modules and
turns it into a pencil-beam-scanning proton plan (RT Ion Plan Storage, two beams with
energy layers and spot maps; ``--beams`` 1-4), with a new patient ID, new UIDs and seeded
spot weights.
The beams' metersets are set so that the plan gives the prescribed dose per fraction
(30.83 Gy in 30 fractions) at its maximum, and the planning system's dose is written
beside the plan: the pencil-beam model of ``pencil_beam.py`` (the one the MOQUI stand-in
uses) applied to the *planned* spots, on a grid of its own (2.5 mm, 29 x 29 x 23 voxels
around the isocentre; MOQUI's is 2 mm and larger, as a Monte Carlo grid often is).

Layout of one case folder (``OUT_DIR/case-001``)::

    RP.<SOPInstanceUID>.dcm      the RT Ion Plan
    RD.tps.dcm                   the planning system's RT Dose of the plan (PLAN summation)
    QA0001_beam1.ptn             one machine delivery log per beam (format below)
    QA0001_beam2.ptn
    READY                        ready marker, written last

Each folder is built under a hidden temporary name (``.case-001.partial``) and renamed
when complete, so a scanner never sees half a case.  ``--with-invalid`` adds
``case-invalid-not-dicom``, whose plan file is not DICOM: the scanner rejects it with
"RP.plan.dcm is not a DICOM file", so the demo shows one visible failure.
``--with-failing-dose`` adds ``case-qa-fail`` (patient QA9001), a valid case whose
delivery went wrong: beam 2's logs show 15 % more monitor units on every spot than
planned, so MOQUI's dose fails gamma 3 %/2 mm against the planning system's.

Machine log format (a plain-text stand-in for a spot-scanning ``.ptn`` log)::

    # MQI machine delivery log (plain-text spot log)
    # format: mqi-ptn-text 1
    # patient_id: QA0001
    # plan_sop_instance_uid: 2.25....
    # beam_number: 1
    # beam_name: B1 G090
    # treatment_machine: PBS-G1
    # delivery_start: 2025-01-01T10:15:00
    # columns: layer energy_mev x_mm y_mm mu
    1 150.000 -12.00 -12.00 0.412300
    ...

Header lines are ``# key: value``; every other non-blank line is one delivered spot:
energy layer number (1-based), nominal energy in MeV, spot position at isocentre in mm,
delivered monitor units.  The delivered values deviate slightly from the plan (position
by ~0.3 mm, MU by ~1 %), as real logs do: MOQUI's dose from them passes gamma 3 %/2 mm
against the planning system's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
from pencil_beam import Grid, grid_around, plan_dose, planned_beams
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RTIonPlanStorage, generate_uid
from rt_dose import write_rt_dose

# the sample plan's treatment beams (--beams N takes the first N)
BEAMS = ((1, "B1 G090", 90.0), (2, "B2 G270", 270.0), (3, "B3 G180", 180.0), (4, "B4 G000", 0.0))
ENERGIES_MEV = (150.0, 145.0, 140.0, 135.0)
SPOT_GRID = (-12.0, -6.0, 0.0, 6.0, 12.0)  # mm, 5 x 5 spots per layer
READY_MARKER = "READY"
TPS_DOSE_FILE = "RD.tps.dcm"
TPS_GRID_SPACING_MM = 2.5
TPS_GRID_HALF_EXTENT_MM = (35.0, 35.0, 27.5)  # x, y, z around the isocentre
INVALID_CASE = "case-invalid-not-dicom"
FAILING_CASE = "case-qa-fail"
FAILING_PATIENT_NUMBER = 9001
FAILING_BEAM, FAILING_MU_FACTOR = 2, 1.15  # beam 2 delivered 15 % too many MU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="where the case folders are created")
    parser.add_argument("--count", type=int, default=3, help="valid cases to build (default 3)")
    parser.add_argument(
        "--with-invalid", action="store_true", help="add one invalid case (non-DICOM plan)"
    )
    parser.add_argument(
        "--with-failing-dose",
        action="store_true",
        help=f"add {FAILING_CASE}: valid, but its delivery fails gamma 3%%/2mm",
    )
    parser.add_argument("--seed", type=int, default=1, help="spot weights and log noise")
    parser.add_argument(
        "--beams", type=int, default=2, choices=range(1, len(BEAMS) + 1), help="treatment beams"
    )
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be >= 0")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"case-{number:03d}" for number in range(1, args.count + 1)]
    if args.with_invalid:
        names.append(INVALID_CASE)
    if args.with_failing_dose:
        names.append(FAILING_CASE)
    existing = [name for name in names if (args.out_dir / name).exists()]
    if existing:
        print(f"make_sample_cases: already exist in {args.out_dir}: {existing}", file=sys.stderr)
        return 1

    for number, name in enumerate(names[: args.count], start=1):
        _publish(
            args.out_dir,
            name,
            lambda folder, n=number: _valid_case(folder, n, args.seed, beams=args.beams),
        )
        print(f"created {args.out_dir / name}")
    if args.with_invalid:
        _publish(args.out_dir, INVALID_CASE, _invalid_case)
        print(f"created {args.out_dir / INVALID_CASE} (invalid on purpose: plan is not DICOM)")
    if args.with_failing_dose:
        _publish(
            args.out_dir,
            FAILING_CASE,
            lambda folder: _valid_case(
                folder,
                FAILING_PATIENT_NUMBER,
                args.seed,
                mu_error={FAILING_BEAM: FAILING_MU_FACTOR},
            ),
        )
        print(
            f"created {args.out_dir / FAILING_CASE} (valid, but beam {FAILING_BEAM} delivered "
            f"{FAILING_MU_FACTOR - 1:.0%} too many MU: fails gamma)"
        )
    return 0


def _publish(out_dir: Path, name: str, build: Callable[[Path], None]) -> None:
    """Build the case under a hidden name, then rename it into place in one step."""
    partial = out_dir / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    build(partial)
    (partial / READY_MARKER).write_text("")
    os.rename(partial, out_dir / name)


def _valid_case(
    folder: Path,
    number: int,
    seed: int,
    *,
    mu_error: dict[int, float] | None = None,
    beams: int = 2,
) -> None:
    """A plan, its planning system's dose and its delivery logs.

    ``mu_error`` maps a beam number to the factor its delivered MU are off by.
    """
    rng = random.Random(seed * 100_003 + number)
    patient_id = f"QA{number:04d}"
    plan = _ion_plan(patient_id, number, rng, BEAMS[:beams])
    grid = _tps_grid(plan)
    _normalise_to_prescription(plan, grid)
    plan.save_as(folder / f"RP.{plan.SOPInstanceUID}.dcm", enforce_file_format=True)
    write_rt_dose(
        folder / TPS_DOSE_FILE,
        plan_dose(planned_beams(plan), grid),
        grid,
        plan=_identity(plan),
        manufacturer="Treatment planning system (MQI Communicator stand-in)",
        series_description=f"TPS dose {plan.RTPlanLabel}",
    )
    start = dt.datetime(2025, 1, 1, 10, 0) + dt.timedelta(days=number % 1000, minutes=15)
    for beam in plan.IonBeamSequence:
        factor = (mu_error or {}).get(int(beam.BeamNumber), 1.0)
        log = _machine_log(plan, beam, start, rng, mu_factor=factor)
        (folder / f"{patient_id}_beam{beam.BeamNumber}.ptn").write_text(log)
        start += dt.timedelta(minutes=4)


def _tps_grid(plan: Dataset) -> Grid:
    isocenter = planned_beams(plan)[0].isocenter_mm
    return grid_around(
        isocenter, spacing_mm=TPS_GRID_SPACING_MM, half_extent_mm=TPS_GRID_HALF_EXTENT_MM
    )


def _normalise_to_prescription(plan: Dataset, grid: Grid) -> None:
    """Scale the beams' metersets so the plan's maximum dose is the dose per fraction.

    What a planning system's normalisation does; the dose is then recomputed from the
    rounded metersets, so the written dose is exactly the saved plan's.
    """
    prescription = max(
        float(reference.TargetPrescriptionDose)
        for reference in plan.DoseReferenceSequence
        if "TargetPrescriptionDose" in reference
    )
    per_fraction = prescription / int(plan.FractionGroupSequence[0].NumberOfFractionsPlanned)
    factor = per_fraction / max(plan_dose(planned_beams(plan), grid))
    for reference in plan.FractionGroupSequence[0].ReferencedBeamSequence:
        reference.BeamMeterset = round(float(reference.BeamMeterset) * factor, 4)


def _identity(plan: Dataset) -> dict[str, str]:
    return {
        "sop_instance_uid": str(plan.SOPInstanceUID),
        "sop_class_uid": str(plan.SOPClassUID),
        "patient_id": str(plan.PatientID),
        "patient_name": str(plan.PatientName),
        "study_instance_uid": str(plan.StudyInstanceUID),
        "frame_of_reference_uid": str(plan.FrameOfReferenceUID),
    }


def _invalid_case(folder: Path) -> None:
    (folder / "RP.plan.dcm").write_text(
        "%PDF-1.4 -- the plan report was exported instead of the DICOM plan\n"
    )
    (folder / "QA9999_beam1.ptn").write_text(
        "# MQI machine delivery log (plain-text spot log)\n"
        "# format: mqi-ptn-text 1\n"
        "# beam_number: 1\n"
        "# columns: layer energy_mev x_mm y_mm mu\n"
        "1 150.000 0.00 0.00 0.500000\n"
    )


def _ion_plan(
    patient_id: str, number: int, rng: random.Random, beams: tuple = BEAMS[:2]
) -> Dataset:
    plan = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    sop_uid = generate_uid()
    plan.file_meta.MediaStorageSOPClassUID = RTIonPlanStorage
    plan.file_meta.MediaStorageSOPInstanceUID = sop_uid
    plan.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plan.SOPClassUID = RTIonPlanStorage
    plan.SOPInstanceUID = sop_uid
    plan.StudyInstanceUID = generate_uid()
    plan.SeriesInstanceUID = generate_uid()
    plan.FrameOfReferenceUID = generate_uid()
    plan.PatientID = patient_id
    plan.PatientName = f"QA^Case{number:04d}"
    plan.Manufacturer = "MQI Communicator sample generator"
    plan.RTPlanLabel = f"QA{number:04d} PBS"
    plan.RTPlanName = f"QA plan {number}"
    plan.ApprovalStatus = "APPROVED"
    # keep the photon beam's isocentre, so the proton beams aim where the original did
    isocenter = [
        round(float(value), 2)
        for value in plan.BeamSequence[0].ControlPointSequence[0].IsocenterPosition
    ]
    for obsolete in ("BeamSequence", "ReferencedRTPlanSequence"):
        if obsolete in plan:
            delattr(plan, obsolete)

    beam_meterset = {beam_number: round(rng.uniform(35.0, 55.0), 4) for beam_number, *_ in beams}
    plan.IonBeamSequence = Sequence(
        [_ion_beam(number_, name, gantry, isocenter, rng) for number_, name, gantry in beams]
    )
    group = plan.FractionGroupSequence[0]
    group.NumberOfBeams = len(beams)
    references = []
    for beam_number, *_ in beams:
        reference = Dataset()
        reference.ReferencedBeamNumber = beam_number
        reference.BeamMeterset = beam_meterset[beam_number]
        reference.BeamDose = 1.0
        references.append(reference)
    group.ReferencedBeamSequence = Sequence(references)
    return plan


def _ion_beam(
    number: int, name: str, gantry: float, isocenter: list[float], rng: random.Random
) -> Dataset:
    beam = Dataset()
    beam.BeamNumber = number
    beam.BeamName = name
    beam.BeamType = "STATIC"
    beam.RadiationType = "PROTON"
    beam.TreatmentMachineName = "PBS-G1"
    beam.PrimaryDosimeterUnit = "MU"
    beam.TreatmentDeliveryType = "TREATMENT"
    beam.ScanMode = "MODULATED"
    beam.VirtualSourceAxisDistances = [2000.0, 2000.0]
    for count in (
        "NumberOfWedges",
        "NumberOfCompensators",
        "NumberOfBoli",
        "NumberOfBlocks",
        "NumberOfRangeShifters",
        "NumberOfLateralSpreadingDevices",
        "NumberOfRangeModulators",
    ):
        setattr(beam, count, 0)
    beam.PatientSupportType = "TABLE"
    beam.ReferencedPatientSetupNumber = 1

    points = []
    cumulative = 0.0
    positions = [coordinate for y in SPOT_GRID for x in SPOT_GRID for coordinate in (x, y)]
    for layer, energy in enumerate(ENERGIES_MEV):
        weights = [
            round(rng.uniform(0.5, 1.5) * (1.0 - 0.1 * layer), 4)
            for _ in range(len(positions) // 2)
        ]
        start, end = _control_point(energy, positions), _control_point(energy, positions)
        start.CumulativeMetersetWeight = round(cumulative, 4)
        start.ScanSpotMetersetWeights = weights
        cumulative += sum(weights)
        end.CumulativeMetersetWeight = round(cumulative, 4)
        end.ScanSpotMetersetWeights = [0.0] * len(weights)
        points += [start, end]
    first = points[0]
    first.GantryAngle = gantry
    first.GantryRotationDirection = "NONE"
    first.PatientSupportAngle = 0.0
    first.PatientSupportRotationDirection = "NONE"
    first.IsocenterPosition = isocenter
    for index, point in enumerate(points):
        point.ControlPointIndex = index
    beam.FinalCumulativeMetersetWeight = round(cumulative, 4)
    beam.NumberOfControlPoints = len(points)
    beam.IonControlPointSequence = Sequence(points)
    return beam


def _control_point(energy: float, positions: list[float]) -> Dataset:
    point = Dataset()
    point.NominalBeamEnergy = energy
    point.ScanSpotTuneID = "3.0"
    point.NumberOfScanSpotPositions = len(positions) // 2
    point.ScanSpotPositionMap = positions
    point.ScanningSpotSize = [6.0, 6.0]
    point.NumberOfPaintings = 1
    return point


def _machine_log(
    plan: Dataset, beam: Dataset, start: dt.datetime, rng: random.Random, *, mu_factor: float
) -> str:
    meterset = next(
        float(reference.BeamMeterset)
        for reference in plan.FractionGroupSequence[0].ReferencedBeamSequence
        if reference.ReferencedBeamNumber == beam.BeamNumber
    )
    mu_per_weight = meterset / float(beam.FinalCumulativeMetersetWeight)
    lines = [
        "# MQI machine delivery log (plain-text spot log)",
        "# format: mqi-ptn-text 1",
        f"# patient_id: {plan.PatientID}",
        f"# plan_sop_instance_uid: {plan.SOPInstanceUID}",
        f"# beam_number: {beam.BeamNumber}",
        f"# beam_name: {beam.BeamName}",
        f"# treatment_machine: {beam.TreatmentMachineName}",
        f"# delivery_start: {start.isoformat()}",
        "# columns: layer energy_mev x_mm y_mm mu",
    ]
    layer = 0
    for point in beam.IonControlPointSequence:
        weights = [float(weight) for weight in point.ScanSpotMetersetWeights]
        if not any(weights):
            continue
        layer += 1
        positions = [float(value) for value in point.ScanSpotPositionMap]
        for spot, weight in enumerate(weights):
            x = positions[2 * spot] + rng.gauss(0.0, 0.3)
            y = positions[2 * spot + 1] + rng.gauss(0.0, 0.3)
            mu = weight * mu_per_weight * mu_factor * (1.0 + rng.gauss(0.0, 0.01))
            lines.append(f"{layer} {float(point.NominalBeamEnergy):.3f} {x:.2f} {y:.2f} {mu:.6f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
