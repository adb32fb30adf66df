"""The GPU-server stand-ins, run as subprocesses the way the executor and the demo run them."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from cases.folder import FolderState, inspect_case_folder, iter_candidate_folders
from workers.gpu_discovery.nvidia_smi import (
    COMPUTE_APPS_QUERY,
    COMPUTE_APPS_QUERY_ARGS,
    GPU_QUERY,
    GPU_QUERY_ARGS,
    parse_compute_apps,
    parse_gpus,
)

STANDINS = Path(__file__).resolve().parents[2] / "hpc_standins"
# The pattern config.yaml gives the run_moqui_sim step.
PROGRESS = re.compile(r"Generating particles for \((?P<done>\d+) of (?P<total>\d+) batches\)")
SWITCHES = (
    "MQI_FAIL_INTERPRETER",
    "MQI_SLEEP_INTERPRETER",
    "MQI_HANG_INTERPRETER",
    "MQI_FAIL_MOQUI",
    "MQI_SLEEP_MOQUI",
    "MQI_HANG_MOQUI",
    "MQI_SLEEP",
    "MQI_HANG",
    "MQI_FAKE_GPUS",
    "MQI_FAKE_GPU_APPS",
    "MQI_FAKE_SMI_FAIL",
)


def run(tool: str, *args: str | Path, env: dict[str, str] | None = None, **kwargs):
    """Run a stand-in with this python, switches cleared unless ``env`` sets them."""
    return subprocess.run(
        [sys.executable, str(STANDINS / tool), *map(str, args)],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SWITCHES}
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("incoming")
    result = run(
        "make_sample_cases.py", out, "--count", "2", "--with-invalid", "--with-failing-dose"
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def case(samples: Path, tmp_path: Path) -> Path:
    """A fresh copy of a valid sample case, as uploaded to the GPU server."""
    target = tmp_path / "upload" / "case-001"
    target.parent.mkdir()
    subprocess.run(["cp", "-a", str(samples / "case-001"), str(target)], check=True)
    return target


def starts(case: Path, tool: str) -> list[str]:
    marker = case / ".mqi_starts" / tool
    return marker.read_text().splitlines() if marker.exists() else []


def plan_uid(case: Path) -> str:
    (plan,) = case.glob("RP.*.dcm")
    return pydicom.dcmread(plan).SOPInstanceUID


# --- make_sample_cases ----------------------------------------------------------------------


def test_samples_are_valid_cases_plus_one_invalid_one(samples: Path) -> None:
    verdicts = {
        path.name: inspect_case_folder(
            path,
            ready_marker="READY",
            quiet_period_sec=30,
            rtplan_globs=["*.dcm"],
            log_patterns=["*.ptn"],
            now=time.time(),
        )
        for path in iter_candidate_folders(samples)
    }

    assert sorted(verdicts) == ["case-001", "case-002", "case-invalid-not-dicom", "case-qa-fail"]
    assert verdicts["case-001"].state == FolderState.READY_VALID
    assert verdicts["case-002"].state == FolderState.READY_VALID
    # its delivery is wrong, not its folder: the logs name the plan's patient and beams
    assert verdicts["case-qa-fail"].state == FolderState.READY_VALID, verdicts["case-qa-fail"]
    assert verdicts["case-invalid-not-dicom"].state == FolderState.READY_INVALID
    assert verdicts["case-invalid-not-dicom"].reasons == ["RP.plan.dcm is not a DICOM file"]
    assert not list(samples.glob(".*"))  # no partial folders left behind


def test_a_sample_is_a_proton_plan_with_one_log_per_beam(samples: Path) -> None:
    case = samples / "case-002"
    (plan_file,) = case.glob("RP.*.dcm")
    plan = pydicom.dcmread(plan_file)
    logs = sorted(path.name for path in case.glob("*.ptn"))

    assert plan_file.name == f"RP.{plan.SOPInstanceUID}.dcm"
    assert plan.Modality == "RTPLAN"
    assert plan.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.8"  # RT Ion Plan Storage
    assert plan.PatientID == "QA0002"
    assert [beam.RadiationType for beam in plan.IonBeamSequence] == ["PROTON", "PROTON"]
    assert logs == ["QA0002_beam1.ptn", "QA0002_beam2.ptn"]
    assert f"# plan_sop_instance_uid: {plan.SOPInstanceUID}" in (case / logs[0]).read_text()
    assert (case / "READY").exists()
    assert plan.SOPInstanceUID != plan_uid(samples / "case-001")


def test_a_sample_of_three_beams_has_three_beams_and_three_logs(tmp_path: Path) -> None:
    result = run("make_sample_cases.py", tmp_path, "--count", "1", "--beams", "3")

    assert result.returncode == 0, result.stderr
    case = tmp_path / "case-001"
    (plan_file,) = case.glob("RP.*.dcm")
    plan = pydicom.dcmread(plan_file)
    assert [(b.BeamNumber, b.BeamName) for b in plan.IonBeamSequence] == [
        (1, "B1 G090"),
        (2, "B2 G270"),
        (3, "B3 G180"),
    ]
    assert plan.FractionGroupSequence[0].NumberOfBeams == 3
    assert sorted(path.name for path in case.glob("*.ptn")) == [
        "QA0001_beam1.ptn",
        "QA0001_beam2.ptn",
        "QA0001_beam3.ptn",
    ]


def test_a_sample_holds_the_planning_systems_dose_of_its_plan(samples: Path) -> None:
    case = samples / "case-001"
    plan = pydicom.dcmread(next(case.glob("RP.*.dcm")))
    dose = pydicom.dcmread(case / "RD.tps.dcm")

    assert_valid_rt_dose(dose, plan.SOPInstanceUID)
    assert (dose.PatientID, dose.StudyInstanceUID, dose.FrameOfReferenceUID) == (
        plan.PatientID,
        plan.StudyInstanceUID,
        plan.FrameOfReferenceUID,
    )
    assert dose.DoseSummationType == "PLAN"
    assert (dose.Columns, dose.Rows, dose.NumberOfFrames) == (29, 29, 23)
    # the plan is normalised so its maximum is the dose per fraction
    assert max_dose_gy(dose) == pytest.approx(30.826203 / 30, rel=1e-4)


def test_the_failing_sample_delivered_15_percent_more_mu_on_beam_2(samples: Path) -> None:
    case = samples / "case-qa-fail"
    plan = pydicom.dcmread(next(case.glob("RP.*.dcm")))
    planned = {
        int(ref.ReferencedBeamNumber): float(ref.BeamMeterset)
        for ref in plan.FractionGroupSequence[0].ReferencedBeamSequence
    }
    delivered = {beam: log_mu(case / f"QA9001_beam{beam}.ptn") for beam in (1, 2)}

    assert plan.PatientID == "QA9001"
    assert delivered[1] == pytest.approx(planned[1], rel=0.01)
    assert delivered[2] == pytest.approx(1.15 * planned[2], rel=0.01)


def test_it_refuses_to_overwrite_existing_cases(samples: Path) -> None:
    result = run("make_sample_cases.py", samples, "--count", "1")

    assert result.returncode == 1
    assert "already exist" in result.stderr


# --- interpreter ----------------------------------------------------------------------------


def test_the_interpreter_writes_moqui_input(case: Path, tmp_path: Path) -> None:
    output = tmp_path / "download" / "case-001"

    result = run(
        "interpreter.py", "--case", "case-001", "--gpu", "1",
        "--case-dir", case, "--output-dir", output,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Interpreter finished" in result.stdout.splitlines()[-1]
    summary = json.loads((output / "moqui_input" / "plan_summary.json").read_text())
    assert summary["case_id"] == "case-001"
    assert summary["gpu"] == 1
    assert summary["sop_instance_uid"] == plan_uid(case)
    assert [beam["spots"] for beam in summary["beams"]] == [100, 100]
    assert [log["beam_number"] for log in summary["logs"]] == [1, 2]
    assert summary["spot_columns"] == ["energy_mev", "x_mm", "y_mm", "mu"]
    assert len(summary["beams"][0]["planned_spots"]) == 100
    assert summary["beams"][0]["planned_spots"][0][0] == 150.0
    assert len(summary["logs"][1]["delivered_spots"]) == 100
    assert sum(spot[3] for spot in summary["logs"][1]["delivered_spots"]) == pytest.approx(
        summary["logs"][1]["delivered_mu"], abs=1e-4
    )
    tps = (output / "moqui_input" / "moqui_tps.in").read_text()
    assert "GPUID 1\n" in tps
    assert f"DicomDir {case}\n" in tps
    assert len(starts(case, "interpreter")) == 1


def test_the_interpreter_defaults_to_the_current_directory(case: Path) -> None:
    result = run("interpreter.py", "--case", "case-001", "--gpu", "0", cwd=case)

    assert result.returncode == 0, result.stderr
    assert (case / "output" / "moqui_input" / "moqui_tps.in").is_file()


def test_every_start_is_recorded(case: Path) -> None:
    for _ in range(2):
        run("interpreter.py", "--case", "case 001; $(x)", "--gpu", "0", "--case-dir", case)

    lines = starts(case, "interpreter")
    assert len(lines) == 2
    assert "case='case 001; $(x)' gpu=0" in lines[0]


@pytest.mark.parametrize("how", ["file", "env"])
def test_the_interpreter_fails_on_request(case: Path, how: str) -> None:
    spec = "7 plan interpretation failed: no beam model for PBS-G1"
    if how == "file":
        (case / "MQI_FAIL_INTERPRETER").write_text(spec + "\n")
    env = {"MQI_FAIL_INTERPRETER": spec} if how == "env" else None

    result = run("interpreter.py", "--case", "c", "--gpu", "0", "--case-dir", case, env=env)

    assert result.returncode == 7
    assert "plan interpretation failed: no beam model for PBS-G1" in result.stderr
    assert not (case / "output").exists()
    assert len(starts(case, "interpreter")) == 1  # a failed start is still a start


def test_an_empty_fail_switch_fails_with_exit_code_1(case: Path) -> None:
    (case / "MQI_FAIL_INTERPRETER").touch()

    result = run("interpreter.py", "--case", "c", "--gpu", "0", "--case-dir", case)

    assert result.returncode == 1
    assert "failing on request (MQI_FAIL_INTERPRETER)" in result.stderr


def test_the_interpreter_sleeps_on_request(case: Path) -> None:
    started = time.monotonic()

    result = run(
        "interpreter.py", "--case", "c", "--gpu", "0", "--case-dir", case,
        env={"MQI_SLEEP_INTERPRETER": "0.5"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 0.5


def test_the_interpreter_hangs_on_request(case: Path) -> None:
    (case / "MQI_HANG_INTERPRETER").touch()
    process = start("interpreter.py", "--case", "c", "--gpu", "0", "--case-dir", case)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)
        assert len(starts(case, "interpreter")) == 1
    finally:
        stop(process)


def test_the_interpreter_rejects_a_folder_without_rtplan(case: Path) -> None:
    for plan in case.glob("*.dcm"):
        plan.unlink()

    result = run("interpreter.py", "--case", "c", "--gpu", "0", "--case-dir", case)

    assert result.returncode == 1
    assert "no RTPLAN DICOM file" in result.stderr


def test_the_interpreter_names_a_malformed_log_line(case: Path) -> None:
    with (case / "QA0001_beam1.ptn").open("a") as log:
        log.write("1 150.0 oops\n")

    result = run("interpreter.py", "--case", "c", "--gpu", "0", "--case-dir", case)

    assert result.returncode == 1
    assert "QA0001_beam1.ptn line 110: expected 'layer energy_mev x_mm y_mm mu'" in result.stderr


@pytest.mark.parametrize("gpu", ["", "-1", "cuda:0"])
def test_a_bad_gpu_id_is_a_usage_error(case: Path, gpu: str) -> None:
    result = run("interpreter.py", "--case", "c", "--gpu", gpu, "--case-dir", case)

    assert result.returncode == 2
    assert "--gpu" in result.stderr


# --- moquisim -------------------------------------------------------------------------------


@pytest.fixture
def interpreted(case: Path) -> Path:
    result = run("interpreter.py", "--case", "case-001", "--gpu", "0", "--case-dir", case)
    assert result.returncode == 0, result.stderr
    return case


def test_moquisim_prints_progress_and_writes_an_rt_dose(interpreted: Path) -> None:
    case = interpreted

    result = run(
        "moquisim.py", "--case", "case-001", "--gpu", "0", "--case-dir", case,
        "--batches", "4", "--batch-seconds", "0",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("Generating")]
    assert progress == [f"Generating particles for ({n} of 4 batches)" for n in range(1, 5)]
    assert all(PROGRESS.fullmatch(line) for line in progress)
    dose = pydicom.dcmread(case / "output" / "RTDOSE.dcm")
    assert_valid_rt_dose(dose, plan_uid(case))
    assert dose.PatientID == "QA0001"
    # the plan gives 30.83 Gy in 30 fractions at its maximum; the delivery differs a little
    # and the two grids sample the Bragg peaks at different points
    assert max_dose_gy(dose) == pytest.approx(30.826203 / 30, rel=0.05)
    assert (dose.Columns, dose.Rows, dose.NumberOfFrames) == (41, 41, 31)
    assert dose.DoseSummationType == "PLAN"
    log = (case / "output" / "moqui.log").read_text()
    assert "Generating particles for (4 of 4 batches)" in log
    assert len(starts(case, "moquisim")) == 1


def test_moquisim_computes_the_dose_the_logs_delivered(interpreted: Path, tmp_path: Path) -> None:
    as_planned = tmp_path / "as-planned"
    run(
        "moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted,
        "--output-dir", as_planned, "--batches", "1", "--batch-seconds", "0",
    )  # fmt: skip
    summary_file = interpreted / "output" / "moqui_input" / "plan_summary.json"
    summary = json.loads(summary_file.read_text())
    for spot in summary["logs"][0]["delivered_spots"]:  # beam 1 given twice its MU
        spot[3] *= 2
    summary_file.write_text(json.dumps(summary))

    result = run(
        "moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted,
        "--batches", "1", "--batch-seconds", "0",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    higher = max_dose_gy(pydicom.dcmread(interpreted / "output" / "RTDOSE.dcm"))
    assert higher > 1.3 * max_dose_gy(pydicom.dcmread(as_planned / "RTDOSE.dcm"))


def test_moquisim_simulates_one_beam_on_request(interpreted: Path, tmp_path: Path) -> None:
    output = tmp_path / "beam-2"

    result = run(
        "moquisim.py", "--case", "case-001", "--gpu", "0", "--case-dir", interpreted,
        "--output-dir", output, "--batches", "2", "--batch-seconds", "0", "--beam", "2",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Beams: 2\n" in result.stdout
    dose = pydicom.dcmread(output / "RTDOSE.dcm")
    assert_valid_rt_dose(dose, plan_uid(interpreted))
    assert dose.DoseSummationType == "BEAM"
    (plan_reference,) = dose.ReferencedRTPlanSequence
    (group,) = plan_reference.ReferencedFractionGroupSequence
    assert [beam.ReferencedBeamNumber for beam in group.ReferencedBeamSequence] == [2]
    assert dose.SeriesDescription == "MOQUI dose for case case-001 beam 2"
    assert (dose.Columns, dose.Rows, dose.NumberOfFrames) == (41, 41, 31)  # the plan's grid


def test_moquisim_fails_one_beam_on_request(interpreted: Path, tmp_path: Path) -> None:
    (interpreted / "MQI_FAIL_MOQUI_BEAM_2").write_text("5 beam 2: spot map rejected\n")

    def beam(number: str):
        return run(
            "moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted,
            "--output-dir", tmp_path / number, "--batches", "1", "--batch-seconds", "0",
            "--beam", number,
        )  # fmt: skip

    failed, other = beam("2"), beam("1")

    assert failed.returncode == 5
    assert "beam 2: spot map rejected" in failed.stderr
    assert other.returncode == 0, other.stderr


def test_moquisim_refuses_a_beam_the_plan_does_not_have(interpreted: Path) -> None:
    result = run(
        "moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted,
        "--batches", "1", "--batch-seconds", "0", "--beam", "3",
    )  # fmt: skip

    assert result.returncode == 2
    assert "--beam 3: the plan has no beam 3 (its beams: [1, 2])" in result.stderr
    assert not (interpreted / "output" / "RTDOSE.dcm").exists()


def test_progress_lines_arrive_one_by_one(interpreted: Path) -> None:
    process = start(
        "moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted,
        "--batches", "3", "--batch-seconds", "0.5",
    )  # fmt: skip
    try:
        first = next(line for line in process.stdout if line.startswith("Generating"))
        assert first == "Generating particles for (1 of 3 batches)\n"
        assert process.poll() is None  # read while the simulation still runs
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)


def test_moquisim_on_its_own_reads_the_plan_itself(case: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"

    result = run(
        "moquisim.py", "--case", "c", "--gpu", "1", "--case-dir", case,
        "--output-dir", output, "--batches", "1", "--batch-seconds", "0",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "reading the RTPLAN and the machine logs directly" in result.stderr
    assert_valid_rt_dose(pydicom.dcmread(output / "RTDOSE.dcm"), plan_uid(case))


def test_moquisim_on_its_own_still_computes_the_delivered_dose(
    interpreted: Path, tmp_path: Path
) -> None:
    # the same case with and without the interpreter's output: the same delivered spots
    with_input, on_its_own = tmp_path / "with-input", tmp_path / "on-its-own"
    for output, extra in ((with_input, ["--input-dir", interpreted / "output"]), (on_its_own, [])):
        result = run(
            "moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted,
            "--output-dir", output, "--batches", "1", "--batch-seconds", "0", *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    assert "reading the RTPLAN" not in (with_input / "moqui.log").read_text()
    assert pixels(with_input / "RTDOSE.dcm") == pixels(on_its_own / "RTDOSE.dcm")


@pytest.mark.parametrize("how", ["file", "env"])
def test_moquisim_fails_on_request(interpreted: Path, how: str) -> None:
    if how == "file":
        (interpreted / "MQI_FAIL_MOQUI").write_text("3 CUDA error: out of memory")
    env = {"MQI_FAIL_MOQUI": "3 CUDA error: out of memory"} if how == "env" else None

    result = run("moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted, env=env)

    assert result.returncode == 3
    assert "CUDA error: out of memory" in result.stderr
    assert not (interpreted / "output" / "RTDOSE.dcm").exists()
    assert len(starts(interpreted, "moquisim")) == 1


def test_the_shared_sleep_switch_slows_moquisim_too(interpreted: Path) -> None:
    (interpreted / "MQI_SLEEP").write_text("0.5")
    started = time.monotonic()

    result = run(
        "moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted,
        "--batches", "1", "--batch-seconds", "0",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 0.5


def test_moquisim_hangs_after_its_first_progress_line(interpreted: Path) -> None:
    process = start(
        "moquisim.py", "--case", "c", "--gpu", "0", "--case-dir", interpreted,
        "--batches", "3", "--batch-seconds", "0",
        env={"MQI_HANG_MOQUI": "1"},
    )  # fmt: skip
    try:
        first = next(line for line in process.stdout if line.startswith("Generating"))
        assert first == "Generating particles for (1 of 3 batches)\n"
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)
    finally:
        stop(process)
    assert not (interpreted / "output" / "RTDOSE.dcm").exists()


# --- nvidia-smi -----------------------------------------------------------------------------


def test_nvidia_smi_answers_both_discovery_queries_in_parseable_form() -> None:
    gpus = run("nvidia-smi", *GPU_QUERY_ARGS)
    apps = run("nvidia-smi", *COMPUTE_APPS_QUERY_ARGS)

    assert gpus.returncode == 0, gpus.stderr
    parsed = parse_gpus(gpus.stdout)
    assert [(gpu.index, gpu.name) for gpu in parsed] == [
        (0, "NVIDIA A100-SXM4-80GB"),
        (1, "NVIDIA A100-SXM4-80GB"),
    ]
    assert parsed[0].memory_total_mib == 81920
    assert apps.returncode == 0
    assert apps.stdout == ""
    assert parse_compute_apps(apps.stdout) == []


def test_nvidia_smi_runs_through_the_shell_as_discovery_calls_it() -> None:
    for query in (GPU_QUERY, COMPUTE_APPS_QUERY):
        result = subprocess.run(
            ["/bin/sh", "-c", f'"{sys.executable}" "{STANDINS / "nvidia-smi"}" {query}'],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_nvidia_smi_reports_the_fake_gpus_and_processes(tmp_path: Path) -> None:
    gpus_file = tmp_path / "gpus.json"
    gpus_file.write_text(
        json.dumps(
            [
                {"index": 0, "uuid": "GPU-aaaa", "name": "Tesla V100-PCIE-32GB",
                 "memory_used": 100, "memory_total": 32768, "utilization": 5, "temperature": 40},
                {"index": 1, "uuid": "GPU-bbbb", "name": "NVIDIA GeForce RTX 3090",
                 "memory_used": None, "memory_total": 24576, "utilization": None,
                 "temperature": None},
            ]
        )
    )  # fmt: skip
    apps_file = tmp_path / "apps.json"
    apps_file.write_text(json.dumps([{"gpu_index": 1, "pid": 777, "used_memory": None}]))
    env = {"MQI_FAKE_GPUS": str(gpus_file), "MQI_FAKE_GPU_APPS": str(apps_file)}

    gpus = run("nvidia-smi", *GPU_QUERY_ARGS, env=env)
    apps = run("nvidia-smi", *COMPUTE_APPS_QUERY_ARGS, env=env)

    assert gpus.stdout.splitlines()[1] == (
        "1, GPU-bbbb, NVIDIA GeForce RTX 3090, [N/A], 24576, [N/A], [N/A]"
    )
    assert parse_gpus(gpus.stdout)[1].utilization_pct is None
    assert apps.stdout == "GPU-bbbb, 777, [N/A]\n"
    assert parse_compute_apps(apps.stdout)[0].gpu_uuid == "GPU-bbbb"


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--query-gpu=index,power.draw", "--format=csv,noheader,nounits"],
        ["--query-gpu=index", "--format=csv"],
        ["--query-gpu=index"],
        [*GPU_QUERY_ARGS, "--loop=1"],
    ],
)
def test_nvidia_smi_refuses_other_arguments_like_the_real_tool(args: list[str]) -> None:
    result = run("nvidia-smi", *args)

    assert result.returncode == 2
    assert "Please run 'nvidia-smi -h' for help." in result.stderr
    assert result.stdout == ""


def test_nvidia_smi_without_gpus_or_driver(tmp_path: Path) -> None:
    (tmp_path / "none.json").write_text("[]")

    no_gpus = run("nvidia-smi", *GPU_QUERY_ARGS, env={"MQI_FAKE_GPUS": str(tmp_path / "none.json")})
    no_driver = run("nvidia-smi", *GPU_QUERY_ARGS, env={"MQI_FAKE_SMI_FAIL": "1"})

    assert (no_gpus.returncode, no_gpus.stdout) == (6, "No devices were found\n")
    assert no_driver.returncode == 9
    assert "couldn't communicate with the NVIDIA driver" in no_driver.stdout


def test_the_stand_ins_are_executable_scripts() -> None:
    for name in ("nvidia-smi", "interpreter.py", "moquisim.py", "make_sample_cases.py"):
        path = STANDINS / name
        assert os.access(path, os.X_OK), name
        assert path.read_text().startswith("#!/usr/bin/env python3\n"), name


# --- helpers --------------------------------------------------------------------------------


def start(tool: str, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(STANDINS / tool), *map(str, args)],
        env=clean_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, killed as a whole below
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    if process.stdout:
        process.stdout.close()


def assert_valid_rt_dose(dose: pydicom.Dataset, plan_sop_instance_uid: str) -> None:
    assert dose.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2"
    assert dose.file_meta.MediaStorageSOPInstanceUID == dose.SOPInstanceUID
    assert dose.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert dose.preamble == b"\0" * 128
    assert dose.Modality == "RTDOSE"
    assert dose.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2"
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan_sop_instance_uid
    assert dose.DoseUnits == "GY"
    assert float(dose.DoseGridScaling) > 0
    frames = int(dose.NumberOfFrames)
    assert len(dose.GridFrameOffsetVector) == frames
    assert len(dose.PixelData) == dose.Rows * dose.Columns * frames * 2
    assert dose.BitsAllocated == 16


def pixels(path: Path) -> tuple[bytes, str]:
    dose = pydicom.dcmread(path)
    return dose.PixelData, str(dose.DoseGridScaling)


def log_mu(path: Path) -> float:
    lines = path.read_text().splitlines()
    return sum(float(line.split()[4]) for line in lines if line and not line.startswith("#"))


def max_dose_gy(dose: pydicom.Dataset) -> float:
    values = struct.unpack(f"<{len(dose.PixelData) // 2}H", dose.PixelData)
    return max(values) * float(dose.DoseGridScaling)
