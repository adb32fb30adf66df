"""Case folders that change under a running system: deleted, renamed or swapped for a link
while their case waits or runs, still being copied, or dropped again under a known name.

Timing comes from the system itself, not from sleeps: a case that holds the only GPU with a
hanging interpreter keeps the next case waiting (``PENDING_RESOURCE``) until the test
cancels it, and the stand-ins' ``.mqi_starts`` markers say when the interpreter started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from io import StringIO
from pathlib import Path

import dramatiq
import pytest
from django.core.management import call_command

from cases.models import Case, CaseEvent, WorkflowStep
from conductor.operations import case_cancel
from mqi_site.config import get_config
from mqi_site.messaging import ErrorKind
from tests.badinput.conftest import Site, files_under, run_mqi
from tests.workers.conftest import wait_for, wait_terminal
from workers.gpu_discovery.sync import sync_gpus
from workers.scanner.scan import scan_cases

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

CANARY = b"OUTSIDE-CANARY-0b1e"


def status(case_id: str) -> str | None:
    return Case.objects.filter(case_id=case_id).values_list("status", flat=True).first()


def waiting_behind_a_hanging_case(site: Site, name: str) -> Path:
    """Case ``name`` found and waiting for the only GPU, which a hanging case holds."""
    sync_gpus(get_config())
    site.sample("QA-holder", MQI_HANG_INTERPRETER="1")
    scan_cases(get_config())
    wait_for(lambda: site.starts("QA-holder", "interpreter") == 1, 30, "the holder to run")
    folder = site.sample(name)
    scan_cases(get_config())
    wait_for(lambda: status(name) == Case.Status.PENDING_RESOURCE, 30, f"{name} to wait")
    return folder


def replay_from_start(case_id: str) -> None:
    """``manage.py replay_failed CASE --from-start``, run as its own process would: the
    message it sends dies with that process's in-memory broker, and the next ``runmqi``
    re-drives the case at start-up."""
    call_command("replay_failed", case_id, "--from-start", stdout=StringIO())
    dramatiq.get_broker().flush_all()


def release_the_gpu(site: Site) -> None:
    """Cancel the holder; its hanging interpreter is killed (the exit code shows it)."""
    case_cancel(case_pk=Case.objects.get(case_id="QA-holder").pk, actor="test")
    runs = site.case_dir("QA-holder") / ".mqi" / "runs"
    wait_for(lambda: list(runs.glob("run_interpreter-*/exit_code")), 30, "the holder's end")


def test_a_folder_deleted_while_its_case_waits_fails_with_how_to_fix_it(site, workers):
    folder = waiting_behind_a_hanging_case(site, "QA-deleted")

    shutil.rmtree(folder)
    release_the_gpu(site)
    (case,) = wait_terminal("QA-deleted")

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    assert case.error_message == (
        f"upload_case_files failed: the case folder {folder} is gone from the watch directory "
        "(moved or deleted after it was found); put it back and retry the case"
    )
    assert not (site.upload_dir / "QA-deleted").exists()


def test_a_folder_renamed_while_its_case_waits_fails_and_runs_under_its_new_name(site, workers):
    folder = waiting_behind_a_hanging_case(site, "QA-renamed")

    folder.rename(site.watch_dir / "QA-renamed-v2")
    release_the_gpu(site)
    (old,) = wait_terminal("QA-renamed")
    scan_cases(get_config())
    (new,) = wait_terminal("QA-renamed-v2")

    assert old.status == Case.Status.FAILED
    assert "is gone from the watch directory (moved or deleted" in old.error_message
    assert new.status == Case.Status.COMPLETED, new.error_message
    assert (site.results("QA-renamed-v2") / "RTDOSE.dcm").is_file()


def test_a_folder_swapped_for_a_link_to_outside_is_not_uploaded(site, workers):
    folder = waiting_behind_a_hanging_case(site, "QA-swapped")
    elsewhere = site.outside / "QA-swapped"
    folder.rename(elsewhere)
    (elsewhere / "CANARY_OUTSIDE.txt").write_bytes(CANARY)

    folder.symlink_to(elsewhere, target_is_directory=True)
    release_the_gpu(site)
    (case,) = wait_terminal("QA-swapped")

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    assert f"the case folder is a symbolic link to {elsewhere}, outside the watch" in (
        case.error_message
    )
    assert not (site.upload_dir / "QA-swapped").exists()


def test_a_folder_deleted_after_its_upload_completes_from_the_uploaded_copy(site, workers):
    sync_gpus(get_config())
    folder = site.sample("QA-gone-later", MQI_SLEEP_INTERPRETER="1")
    scan_cases(get_config())
    wait_for(lambda: site.starts("QA-gone-later", "interpreter") == 1, 30, "the interpreter")

    shutil.rmtree(folder)
    assert status("QA-gone-later") == Case.Status.PROCESSING
    (case,) = wait_terminal("QA-gone-later")

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert (site.results("QA-gone-later") / "RTDOSE.dcm").is_file()
    assert site.starts("QA-gone-later", "interpreter") == 1
    # the planning system's dose went with the folder: nothing to compare with, and it says so
    assert case.qa_verdict == Case.QAVerdict.NOT_EVALUATED
    assert case.qa_said().startswith("not evaluated: no TPS dose in the case folder (")


def test_the_uploaded_copy_deleted_before_the_interpreter_works_fails_the_case(site, workers):
    sync_gpus(get_config())
    site.sample("QA-copy-gone", MQI_SLEEP_INTERPRETER="5")
    scan_cases(get_config())
    remote = site.upload_dir / "QA-copy-gone" / "run-1"
    wait_for(
        lambda: WorkflowStep.objects.filter(name="run_interpreter", status="RUNNING").exists(),
        30,
        "the interpreter to be running",
    )
    pgid = int(next(remote.glob(".mqi/runs/run_interpreter-*/pgid")).read_text())

    # someone cleans the GPU server while the interpreter sleeps; the running command's
    # wrapper may write into the folder meanwhile, so clean as `rm -rf` run again would
    for _ in range(50):
        with contextlib.suppress(OSError):
            shutil.rmtree(remote)
        if not remote.exists():
            break
    assert not remote.exists()
    (case,) = wait_terminal("QA-copy-gone")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # the orphaned stand-in, still asleep

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    assert case.error_message == (
        f"run_interpreter failed: the case folder {remote} is missing on local; "
        "re-run the case from the start to upload it again"
    )
    assert list(case.steps.values_list("name", "error_kind")) == [
        ("upload_case_files", ""),
        ("run_interpreter", ErrorKind.TRANSIENT),  # its run folder vanished: tried again
        ("run_interpreter", ErrorKind.PERMANENT),
    ]


def test_a_folder_still_being_copied_waits_for_a_later_run(site):
    folder = site.sample("QA-slow-copy")
    (folder / "READY").unlink()  # the copy tool writes the marker last

    first = run_mqi("--once", "--timeout", "60")
    (folder / "READY").touch()
    second = run_mqi("--once", "--timeout", "60")

    assert "not complete yet, left for a later run: QA-slow-copy" in first.stdout
    assert f"no complete case folders in {site.watch_dir}" in first.stdout
    assert first.code == 0
    assert second.code == 0, second.stdout
    assert Case.objects.get(case_id="QA-slow-copy").status == Case.Status.COMPLETED
    assert site.starts("QA-slow-copy", "interpreter") == 1


def test_a_case_id_seen_again_is_not_run_again(site):
    site.sample("QA-twice")
    first = run_mqi("--once", "--timeout", "60")
    dose = (site.results("QA-twice") / "RTDOSE.dcm").read_bytes()

    again = run_mqi("--once", "--timeout", "60")  # the same folder, still there
    shutil.rmtree(site.watch_dir / "QA-twice")  # a new folder under the same name
    site.sample("QA-twice", MQI_FAIL_INTERPRETER="7 this copy must not run")
    dropped_again = run_mqi("--once", "--timeout", "60")

    assert first.code == 0
    for later in (again, dropped_again):
        assert later.code == 0
        assert f"no complete case folders in {site.watch_dir}" in later.stdout
    case = Case.objects.get(case_id="QA-twice")
    assert case.status == Case.Status.COMPLETED
    assert site.starts("QA-twice", "interpreter") == 1
    assert (site.results("QA-twice") / "RTDOSE.dcm").read_bytes() == dose


def test_a_fixed_folder_runs_again_only_when_replayed_from_the_start(site):
    folder = site.sample("QA-fixed")
    log = folder / "QA0001_beam2.ptn"
    spots = log.read_bytes()
    log.write_bytes(b"")
    first = run_mqi("--once", "--timeout", "60")
    log.write_bytes(spots)  # the physicist copies the log again

    unchanged = run_mqi("--once", "--timeout", "60")
    replay_from_start("QA-fixed")
    replayed = run_mqi("--once", "--timeout", "60")

    assert "Failed     QA-fixed  invalid case folder: QA0001_beam2.ptn is empty" in first.stdout
    assert f"no complete case folders in {site.watch_dir}" in unchanged.stdout
    assert replayed.code == 0, replayed.stdout
    assert "Completed  QA-fixed" in replayed.stdout


def test_an_outside_link_replayed_from_the_start_is_still_not_uploaded(site):
    elsewhere = site.sample("QA-elsewhere")
    elsewhere.rename(site.outside / "QA-elsewhere")
    (site.outside / "QA-elsewhere" / "CANARY_OUTSIDE.txt").write_bytes(CANARY)
    (site.watch_dir / "QA-linked").symlink_to(site.outside / "QA-elsewhere")
    first = run_mqi("--once", "--timeout", "60")

    replay_from_start("QA-linked")
    replayed = run_mqi("--once", "--timeout", "60")

    case = Case.objects.get(case_id="QA-linked")
    assert "Failed     QA-linked  invalid case folder: the case folder is a symbolic" in (
        first.stdout
    )
    assert replayed.code == 0  # the replay was refused: nothing new to run
    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.INVALID_INPUT
    assert case.error_message.startswith("invalid case folder: the case folder is a symbolic")
    assert not case.steps.exists()
    assert CaseEvent.objects.filter(case=case, kind="recheck_failed").exists()
    written = list(files_under(*site.written_trees()))
    assert [path for path in written if CANARY in path.read_bytes()] == []
