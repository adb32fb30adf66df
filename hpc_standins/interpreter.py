#!/usr/bin/env python3
"""Stand-in for the MOQUI interpreter: RTPLAN + machine logs -> MOQUI input files.

    interpreter.py --case CASE_ID --gpu GPU_ID [--case-dir DIR] [--output-dir DIR]

Takes the real tool's arguments, reads the case's RTPLAN (pydicom) and its ``*.ptn``
machine logs (the plain-text format documented in ``make_sample_cases.py``), prints a few
progress lines and writes into the output directory:

    moqui_input/plan_summary.json   plan identity, beams, layers, spots, MU, logs read,
                                    and every planned and delivered spot (below)
    moqui_input/moqui_tps.in        MOQUI's key/value input (GPUID, DicomDir, OutputDir, ...)

The summary lists each beam's planned spots (``planned_spots``, from the plan's spot maps
and meterset weights) and each log's delivered spots (``delivered_spots``), both as
``[energy_mev, x_mm, y_mm, mu]`` (``spot_columns``), so the MOQUI stand-in computes its
dose from what was delivered.

``--case-dir`` defaults to the current directory (the real tool runs in the case folder),
``--output-dir`` to ``<case dir>/output``.  Needs only the standard library and pydicom;
the demo and the tests run it with the project venv's python.

Exit codes: 0 done, 1 bad input (no RTPLAN, several RTPLANs, malformed log, missing case
folder), 2 bad arguments, N when asked to fail.

Behaviour switches for tests: a file of that name in the case folder, or else an
environment variable of that name (the file wins):

    MQI_FAIL_INTERPRETER   fail: content "N message" -> message on stderr, exit N (1-255);
                           empty -> exit 1 with a default message
    MQI_SLEEP_INTERPRETER  sleep this many seconds before working (MQI_SLEEP: both tools)
    MQI_HANG_INTERPRETER   never finish (MQI_HANG: both tools); killed by signal only

They apply in this order: sleep, hang, fail.  Every start, before anything else, appends
one line to ``<case dir>/.mqi_starts/interpreter``, so a test can prove the step was
never started twice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pencil_beam import planned_beams

# pydicom (and numpy, which it loads when installed) takes a while to import on a busy
# machine: it is imported where DICOM is read, after the start is on record
if TYPE_CHECKING:
    import pydicom

TOOL = "interpreter"
SWITCH_SUFFIX = "INTERPRETER"
HANG_AT_START = True  # the hang switch stops the interpreter before it does anything
PLAN_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"}
LOG_COLUMNS = ("layer", "energy_mev", "x_mm", "y_mm", "mu")
SPOT_COLUMNS = ["energy_mev", "x_mm", "y_mm", "mu"]


class InputError(Exception):
    """The case folder cannot be interpreted; the message says why (exit code 1)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MOQUI interpreter stand-in")
    parser.add_argument("--case", required=True, help="case id")
    parser.add_argument("--gpu", required=True, type=_gpu_index, help="GPU index")
    parser.add_argument("--case-dir", type=Path, default=None, help="default: current dir")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: CASE_DIR/output")
    args = parser.parse_args(argv)
    case_dir = (args.case_dir or Path.cwd()).absolute()
    output_dir = (args.output_dir or case_dir / "output").absolute()
    if not case_dir.is_dir():
        print(f"{TOOL}: case directory {case_dir} does not exist", file=sys.stderr)
        return 1
    record_start(case_dir, TOOL, args.case, args.gpu)

    failure = apply_switches(case_dir, SWITCH_SUFFIX)
    if failure is not None:
        return failure

    say(f"MQI interpreter (stand-in) for case {args.case!r} on GPU {args.gpu}")
    try:
        plan_path, plan = find_plan(case_dir, skip=output_dir)
        say(f"Reading RTPLAN {plan_path.relative_to(case_dir)}")
        summary = summarize_plan(plan, plan_path)
        say(
            f"Plan {summary['plan_label']!r}: {len(summary['beams'])} beam(s), "
            f"{sum(b['layers'] for b in summary['beams'])} layer(s), "
            f"{sum(b['spots'] for b in summary['beams'])} spot(s)"
        )
        logs = [read_log(path, case_dir) for path in find_logs(case_dir, skip=output_dir)]
    except InputError as exc:
        print(f"{TOOL}: {exc}", file=sys.stderr)
        return 1
    if not logs:
        print(f"{TOOL}: no machine log files (*.ptn) in {case_dir}", file=sys.stderr)
        return 1
    for log in logs:
        say(f"Read machine log {log['file']}: {log['spots']} spots, {log['delivered_mu']} MU")
    _warn_about_unmatched(summary, logs)

    summary.update(case_id=args.case, gpu=args.gpu, logs=logs, case_dir=str(case_dir))
    input_dir = output_dir / "moqui_input"
    input_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(input_dir / "plan_summary.json", json.dumps(summary, indent=2) + "\n")
    write_atomically(input_dir / "moqui_tps.in", tps_input(summary, case_dir, output_dir))
    say(f"Wrote MOQUI input to {input_dir}")
    say("Interpreter finished")
    return 0


def _gpu_index(value: str) -> int:
    if not value.isdecimal():
        raise argparse.ArgumentTypeError(f"GPU id must be a non-negative integer, not {value!r}")
    return int(value)


def say(line: str) -> None:
    print(line, flush=True)


# --- switches and start marker (kept identical in moquisim.py) --------------------------------


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


# --- reading the case -------------------------------------------------------------------------


def case_files(case_dir: Path, suffix: str, skip: Path) -> list[Path]:
    """Files ending in ``suffix`` (any case), hidden entries and ``skip`` left out."""
    found = []
    for folder, dirs, files in os.walk(case_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(folder, d) != skip)
        found += [
            Path(folder, f)
            for f in sorted(files)
            if f.lower().endswith(suffix) and not f.startswith(".")
        ]
    return found


def find_plan(case_dir: Path, *, skip: Path) -> tuple[Path, pydicom.Dataset]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    found: dict[str, tuple[Path, pydicom.Dataset]] = {}  # by SOPInstanceUID: copies are one
    for path in case_files(case_dir, ".dcm", skip):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            print(f"{TOOL}: warning: skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if dataset.get("Modality") == "RTPLAN" or dataset.get("SOPClassUID") in PLAN_SOP_CLASSES:
            found.setdefault(str(dataset.get("SOPInstanceUID", path)), (path, dataset))
    plans = list(found.values())
    if not plans:
        raise InputError(f"no RTPLAN DICOM file in {case_dir}")
    if len(plans) > 1:
        names = ", ".join(path.name for path, _ in plans)
        raise InputError(f"several RTPLANs in the case folder ({names}); expected one")
    return plans[0]


def summarize_plan(plan: pydicom.Dataset, path: Path) -> dict[str, Any]:
    meterset = {}
    for group in plan.get("FractionGroupSequence") or []:
        for reference in group.get("ReferencedBeamSequence", []):
            if "BeamMeterset" in reference:
                meterset[int(reference.ReferencedBeamNumber)] = float(reference.BeamMeterset)
    beams = [_beam_summary(beam, meterset) for beam in plan.get("IonBeamSequence") or []] or [
        _beam_summary(beam, meterset) for beam in plan.get("BeamSequence") or []
    ]
    if not beams:
        raise InputError(f"{path.name} has no beams")
    spots = {beam.number: beam.spots for beam in planned_beams(plan)}
    for beam in beams:
        beam["planned_spots"] = [list(spot) for spot in spots.get(beam["number"], ())]
    if any(beam["radiation_type"] != "PROTON" for beam in beams):
        print(f"{TOOL}: warning: not a proton plan; simulating anyway", file=sys.stderr)
    groups = plan.get("FractionGroupSequence") or []
    fractions = groups[0].get("NumberOfFractionsPlanned") if groups else None
    prescriptions = [
        float(reference.TargetPrescriptionDose)
        for reference in plan.get("DoseReferenceSequence", [])
        if "TargetPrescriptionDose" in reference
    ]
    return {
        "plan_file": path.name,
        "sop_class_uid": str(plan.get("SOPClassUID", "")),
        "sop_instance_uid": str(plan.get("SOPInstanceUID", "")),
        "study_instance_uid": str(plan.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(plan.get("FrameOfReferenceUID", "")),
        "patient_id": str(plan.get("PatientID", "")),
        "patient_name": str(plan.get("PatientName", "")),
        "plan_label": str(plan.get("RTPlanLabel", "")),
        "fractions": int(fractions) if fractions else None,
        "prescription_gy": max(prescriptions) if prescriptions else None,
        "spot_columns": SPOT_COLUMNS,
        "beams": beams,
    }


def _beam_summary(beam: pydicom.Dataset, meterset: dict[int, float]) -> dict[str, Any]:
    points = beam.get("IonControlPointSequence") or beam.get("ControlPointSequence") or []
    first = points[0] if points else {}
    energies = [float(p.NominalBeamEnergy) for p in points if "NominalBeamEnergy" in p]
    spots = sum(
        sum(1 for weight in p.ScanSpotMetersetWeights if float(weight) > 0)
        for p in points
        if "ScanSpotMetersetWeights" in p
    )
    isocenter = first.get("IsocenterPosition")
    return {
        "number": int(beam.BeamNumber),
        "name": str(beam.get("BeamName", "")),
        "radiation_type": str(beam.get("RadiationType", "")),
        "machine": str(beam.get("TreatmentMachineName", "")),
        "gantry_angle": float(first.GantryAngle) if "GantryAngle" in first else None,
        "isocenter_mm": [float(v) for v in isocenter] if isocenter else None,
        "layers": len(dict.fromkeys(energies)),
        "spots": spots,
        "planned_mu": meterset.get(int(beam.BeamNumber)),
    }


def find_logs(case_dir: Path, *, skip: Path) -> list[Path]:
    return case_files(case_dir, ".ptn", skip)


def read_log(path: Path, case_dir: Path) -> dict[str, Any]:
    """Parse one text spot log; a malformed data line is an input error naming the line."""
    header: dict[str, str] = {}
    spots: list[list[float]] = []
    layers = set()
    name = str(path.relative_to(case_dir))
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                key, colon, value = line[1:].partition(":")
                if colon:
                    header[key.strip()] = value.strip()
                continue
            fields = line.split()
            try:
                if len(fields) != len(LOG_COLUMNS):
                    raise ValueError(f"expected {len(LOG_COLUMNS)} fields")
                layers.add(int(fields[0]))
                spots.append([float(value) for value in fields[1:5]])
            except ValueError:
                raise InputError(
                    f"{name} line {number}: expected '{' '.join(LOG_COLUMNS)}', got {line!r}"
                ) from None
    beam_number = header.get("beam_number", "")
    return {
        "file": name,
        "beam_number": int(beam_number) if beam_number.isdecimal() else None,
        "beam_name": header.get("beam_name"),
        "layers": len(layers),
        "spots": len(spots),
        "delivered_mu": round(sum(spot[3] for spot in spots), 4),
        "delivered_spots": spots,
    }


def _warn_about_unmatched(summary: dict[str, Any], logs: list[dict[str, Any]]) -> None:
    planned = {beam["number"] for beam in summary["beams"]}
    logged = {log["beam_number"] for log in logs if log["beam_number"] is not None}
    for beam in sorted(planned - logged):
        print(f"{TOOL}: warning: no machine log for beam {beam}", file=sys.stderr)
    for beam in sorted(logged - planned):
        print(
            f"{TOOL}: warning: log for beam {beam}, which the plan does not have", file=sys.stderr
        )


# --- writing MOQUI input ----------------------------------------------------------------------


def tps_input(summary: dict[str, Any], case_dir: Path, output_dir: Path) -> str:
    """MOQUI's ``moqui_tps.in`` key/value format, filled from the plan summary."""
    beams = ",".join(str(beam["number"]) for beam in summary["beams"])
    lines = [
        "# MOQUI input written by the MQI interpreter stand-in",
        f"# case {summary['case_id']!r}, plan {summary['plan_file']}",
        f"GPUID {summary['gpu']}",
        "RandomSeed -1932780356",
        "UseAbsolutePath true",
        "Verbosity 0",
        f"ParentDir {output_dir / 'moqui_input'}",
        f"DicomDir {case_dir}",
        f"logFilePath {case_dir}",
        f"OutputDir {output_dir}",
        "OutputFormat dcm",
        "SimulationType perPlan",
        "SourceType FluenceMap",
        "ScoringQuantity Dose",
        "ParticlesPerHistory 1",
        f"GantryNum {len(summary['beams'])}",
        f"BeamNumbers {beams}",
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
