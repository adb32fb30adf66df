#!/usr/bin/env python3
"""Stand-in for the MOQUI Monte Carlo simulation: MOQUI input -> RT Dose DICOM.

    moquisim.py --case CASE_ID --gpu GPU_ID [--case-dir DIR] [--output-dir DIR]
                [--input-dir DIR] [--batches N] [--batch-seconds S] [--beam N]

Prints MOQUI's progress lines, flushed one by one, exactly as the real engine does::

    Generating particles for (1 of 10 batches)
    ...
    Generating particles for (10 of 10 batches)

(each line is printed when its batch starts; a batch takes ``--batch-seconds``), then
writes into the output directory:

    RTDOSE.dcm   RT Dose Storage, valid File Meta, a 41 x 41 x 31 dose grid (2 mm, centred
                 on the isocentre) in Gy with DoseGridScaling, referencing the plan's
                 SOPInstanceUID in ReferencedRTPlanSequence and sharing its patient, study
                 and frame of reference
    moqui.log    everything printed on stdout

The dose is the pencil-beam model of ``pencil_beam.py`` applied to the spots the machine
logs say were *delivered* (energy, position, MU), so a delivery that differs from the plan
gives a different dose.  It reads them from the interpreter's
``<input dir>/moqui_input/plan_summary.json`` (``--input-dir`` defaults to the output
directory); a beam without a log is simulated from its planned spots, with a warning.
Without the summary (moquisim run on its own) it reads the RTPLAN and the machine logs
from the case folder itself, as the interpreter does, and says so on stderr: the dose is
still the delivered one, never silently the plan's.

``--beam N`` simulates only treatment beam N: ``RTDOSE.dcm`` then holds that beam's dose
(DoseSummationType BEAM, the beam named in the plan reference) on the same grid as the
whole plan's, so the doses of separate ``--beam`` runs add up to the plan's dose.  Beams
run in parallel each get an output directory of their own and ``--input-dir`` naming
the one the interpreter wrote to.

``--case-dir`` defaults to the current directory, ``--output-dir`` to
``<case dir>/output``, ``--input-dir`` to the output directory.  Needs only the standard
library and pydicom; the demo and the tests run it with the project venv's python.

Exit codes: 0 done, 1 bad input (no plan, no spots to simulate), 2 bad arguments (also
``--beam`` naming a beam the plan does not have), N when asked to fail.

Behaviour switches for tests: a file of that name in the case folder, or else an
environment variable of that name (the file wins):

    MQI_FAIL_MOQUI    fail: content "N message" -> message on stderr, exit N (1-255);
                      empty -> exit 1 with a default message
    MQI_FAIL_MOQUI_BEAM_<n>  the same, only for the run with ``--beam <n>``
    MQI_SLEEP_MOQUI   sleep this many seconds before starting (MQI_SLEEP: both tools)
    MQI_HANG_MOQUI    hang forever right after printing the first progress line
                      (MQI_HANG: both tools); killed by signal only

Sleep and fail apply before the simulation starts.  Every start, before anything else,
appends one line to ``<case dir>/.mqi_starts/moquisim``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pencil_beam import Beam, Grid, grid_around, plan_dose

TOOL = "moquisim"
SWITCH_SUFFIX = "MOQUI"
HANG_AT_START = False  # MOQUI hangs mid-simulation, after its first progress line
PLAN_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"}
DOSE_FILE = "RTDOSE.dcm"
GRID_SPACING_MM = 2.0
GRID_HALF_EXTENT_MM = (40.0, 40.0, 30.0)  # x, y, z around the isocentre
_log: TextIO | None = None


class InputError(Exception):
    """The simulation has nothing to work on; the message says why (exit code 1)."""


class UsageError(Exception):
    """The arguments do not fit the input (exit code 2)."""


def main(argv: list[str] | None = None) -> int:
    global _log  # one moqui.log per process, like the real engine's
    parser = argparse.ArgumentParser(description="MOQUI simulation stand-in")
    parser.add_argument("--case", required=True, help="case id")
    parser.add_argument("--gpu", required=True, type=_gpu_index, help="GPU index")
    parser.add_argument("--case-dir", type=Path, default=None, help="default: current dir")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: CASE_DIR/output")
    parser.add_argument(
        "--input-dir", type=Path, default=None, help="holds moqui_input/; default: OUTPUT_DIR"
    )
    parser.add_argument("--batches", type=int, default=10, help="default 10")
    parser.add_argument("--batch-seconds", type=float, default=0.5, help="default 0.5")
    parser.add_argument(
        "--beam", type=_beam_number, default=None, help="simulate only this treatment beam"
    )
    args = parser.parse_args(argv)
    if args.batches < 1 or args.batch_seconds < 0:
        parser.error("--batches must be >= 1 and --batch-seconds >= 0")
    case_dir = (args.case_dir or Path.cwd()).absolute()
    output_dir = (args.output_dir or case_dir / "output").absolute()
    input_dir = (args.input_dir or output_dir).absolute()
    if not case_dir.is_dir():
        print(f"{TOOL}: case directory {case_dir} does not exist", file=sys.stderr)
        return 1
    record_start(case_dir, TOOL, args.case, args.gpu)
    # pydicom (and numpy, which it loads when installed) takes a while to import on a busy
    # machine: only after the start is on record, so a start shows at once
    from rt_dose import write_rt_dose

    failure = apply_switches(case_dir, SWITCH_SUFFIX)
    if failure is None and args.beam is not None:
        failure = requested_failure(case_dir, f"MQI_FAIL_{SWITCH_SUFFIX}_BEAM_{args.beam}")
    if failure is not None:
        return failure

    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / "moqui.log").open("w", encoding="utf-8") as log:
        _log = log
        say("MOQUI (stand-in) Monte Carlo dose engine")
        try:
            summary = load_summary(case_dir, output_dir, input_dir)
            beams = beams_to_simulate(summary, args.beam)
        except (InputError, UsageError) as exc:
            print(f"{TOOL}: {exc}", file=sys.stderr)
            log.write(f"ERROR: {exc}\n")
            return 2 if isinstance(exc, UsageError) else 1
        simulate(args, case_dir, summary, beams)
        grid = dose_grid(summary)
        doses = plan_dose(beams, grid)
        say(f"Writing dose to {DOSE_FILE}")
        description = f"MOQUI dose for case {args.case}"
        if args.beam is not None:
            description += f" beam {args.beam}"
        write_rt_dose(
            output_dir / DOSE_FILE,
            doses,
            grid,
            plan=summary,
            manufacturer="MOQUI (MQI Communicator stand-in)",
            series_description=description,
            beam_number=args.beam,
        )
        say("MOQUI finished")
    return 0


def _gpu_index(value: str) -> int:
    if not value.isdecimal():
        raise argparse.ArgumentTypeError(f"GPU id must be a non-negative integer, not {value!r}")
    return int(value)


def _beam_number(value: str) -> int:
    if not value.isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"beam number must be a positive integer, not {value!r}")
    return int(value)


def say(line: str) -> None:
    print(line, flush=True)
    if _log is not None:
        _log.write(line + "\n")
        _log.flush()


def simulate(
    args: argparse.Namespace, case_dir: Path, summary: dict[str, Any], beams: list[Beam]
) -> None:
    say(f"Case {args.case!r}, plan {summary.get('plan_file')}, GPU {args.gpu}")
    say(f"Beams: {', '.join(str(beam.number) for beam in beams)}")
    for beam in beams:
        mu = sum(spot[3] for spot in beam.spots)
        say(f"Beam {beam.number}: {len(beam.spots)} spots, {mu:.4f} MU")
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
    return requested_failure(case_dir, f"MQI_FAIL_{suffix}")


def requested_failure(case_dir: Path, name: str) -> int | None:
    """Fail as the switch ``name`` asks: its message on stderr, its exit code (None: no)."""
    fail = switch(case_dir, name)
    if fail is None:
        return None
    code, message = _failure(fail, name)
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


def load_summary(case_dir: Path, output_dir: Path, input_dir: Path) -> dict[str, Any]:
    """The interpreter's plan summary, or (run on its own) one read from the case folder."""
    path = input_dir / "moqui_input" / "plan_summary.json"
    if path.is_file():
        say(f"Reading MOQUI input {path}")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
    print(
        f"{TOOL}: warning: no interpreter output in {path.parent}; "
        "reading the RTPLAN and the machine logs directly",
        file=sys.stderr,
    )
    return _summary_from_case(case_dir, skip=output_dir)


def _summary_from_case(case_dir: Path, *, skip: Path) -> dict[str, Any]:
    """What the interpreter would pass on: the plan, and the spots its logs delivered.

    Read with the interpreter's own functions, so that moquisim on its own still computes
    the *delivered* dose: the planned spots alone would give the planning system's dose
    and pass any QA.
    """
    import interpreter

    try:
        plan_path, plan = interpreter.find_plan(case_dir, skip=skip)
        summary = interpreter.summarize_plan(plan, plan_path)
        logs = interpreter.find_logs(case_dir, skip=skip)
        summary["logs"] = [interpreter.read_log(path, case_dir) for path in logs]
    except interpreter.InputError as exc:
        raise InputError(f"no MOQUI input, and the case folder cannot be read: {exc}") from None
    return summary


def beams_to_simulate(summary: dict[str, Any], only: int | None) -> list[Beam]:
    """The plan's beams with the spots their logs delivered (planned spots without a log)."""
    delivered: dict[int, list[tuple[float, float, float, float]]] = {}
    for log in summary.get("logs") or []:
        if log.get("beam_number") is not None:
            spots = [tuple(spot) for spot in log.get("delivered_spots") or []]
            delivered.setdefault(log["beam_number"], []).extend(spots)  # type: ignore[arg-type]
    numbers = [beam["number"] for beam in summary["beams"]]
    if only is not None and only not in numbers:
        raise UsageError(f"--beam {only}: the plan has no beam {only} (its beams: {numbers})")
    beams = []
    for beam in summary["beams"]:
        if only is not None and beam["number"] != only:
            continue
        spots = delivered.get(beam["number"])
        if spots is None:
            spots = [tuple(spot) for spot in beam.get("planned_spots") or []]
            if spots:
                print(
                    f"{TOOL}: warning: no delivery log for beam {beam['number']}; "
                    "simulating its planned spots",
                    file=sys.stderr,
                )
        if not spots:
            print(f"{TOOL}: warning: beam {beam['number']} has no spots", file=sys.stderr)
            continue
        beams.append(
            Beam(
                number=beam["number"],
                gantry_angle=beam.get("gantry_angle") or 0.0,
                isocenter_mm=tuple(beam.get("isocenter_mm") or (0.0, 0.0, 0.0)),
                spots=tuple(spots),  # type: ignore[arg-type]
            )
        )
    if not beams:
        raise InputError("no beam with scan spots to simulate (is this a PBS proton plan?)")
    return beams


# --- output -----------------------------------------------------------------------------------


def dose_grid(summary: dict[str, Any]) -> Grid:
    """The plan's dose grid, centred on its (first) isocentre: the same for every --beam."""
    isocenter = next(
        (beam["isocenter_mm"] for beam in summary["beams"] if beam.get("isocenter_mm")),
        [0.0, 0.0, 0.0],
    )
    return grid_around(isocenter, spacing_mm=GRID_SPACING_MM, half_extent_mm=GRID_HALF_EXTENT_MM)


if __name__ == "__main__":
    sys.exit(main())
