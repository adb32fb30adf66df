"""The scanner: complete folders are reported once, incomplete ones wait, invalid ones
become visible failed cases; file events trigger a scan of just that folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import time_machine

from cases.manifest import folder_manifest
from cases.models import Case
from conductor.actors import conductor
from mqi_site.config import get_config
from mqi_site.messaging import QUEUES, Command
from mqi_site.triggers import FileLeaderLock, Triggers
from tests.conftest import drain
from tests.workers.conftest import make_case, wait_for
from workers.scanner.scan import scan_cases

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def watch_dir() -> Path:
    path = Path(get_config().scanner.watch_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def reported(broker) -> list[dict]:
    return [
        m.args[1] for m in drain(broker, QUEUES["conductor"]) if m.args[0] == Command.NEW_CASE_FOUND
    ]


def deliver(messages: list[dict]) -> None:
    for payload in messages:
        conductor.fn(Command.NEW_CASE_FOUND, payload)


def test_a_folder_with_its_ready_marker_is_reported_at_once(stub_broker, watch_dir):
    make_case(watch_dir, "QA-1")

    result = scan_cases(get_config())

    assert result.reported == ["QA-1"]
    (payload,) = reported(stub_broker)
    plan = payload.pop("plan")
    assert payload == {
        "case_id": "QA-1",
        "source_path": str(watch_dir / "QA-1"),
        "workflow": "default_qa",
        "problems": [],
        "log_check": "passed",
        "manifest": folder_manifest(watch_dir / "QA-1"),
    }
    assert (plan["patient_id"], plan["plan_label"]) == ("QA0001", "QA0001 PBS")
    assert plan["beams"] == [{"number": 1, "name": "B1 G090"}, {"number": 2, "name": "B2 G270"}]


def test_with_a_marker_configured_old_looking_files_are_not_enough(stub_broker, watch_dir):
    folder = make_case(watch_dir, "QA-copied")
    (folder / "READY").unlink()
    long_ago = time.time() - 30 * 86400  # copied with its times kept: cp -p, rsync -t
    for path in [folder, *folder.iterdir()]:
        os.utime(path, (long_ago, long_ago))

    assert scan_cases(get_config()).incomplete == ["QA-copied"]
    assert reported(stub_broker) == []


@pytest.fixture
def no_marker(use_config) -> None:
    """A site without a ready marker: the quiet period decides."""
    use_config(lambda raw: raw["scanner"].update(ready_marker=""))


def test_a_folder_without_marker_waits_for_the_quiet_period(stub_broker, no_marker, watch_dir):
    folder = make_case(watch_dir, "QA-2")
    (folder / "READY").unlink()
    now = time.time()
    for path in [folder, *folder.iterdir()]:
        os.utime(path, (now, now))

    assert scan_cases(get_config()).incomplete == ["QA-2"]
    assert reported(stub_broker) == []

    quiet = get_config().scanner.quiet_period_sec
    with time_machine.travel(now + quiet + 1, tick=False):
        assert scan_cases(get_config()).reported == ["QA-2"]


def test_a_folder_still_being_written_is_not_picked_up_early(stub_broker, no_marker, watch_dir):
    folder = make_case(watch_dir, "QA-3")
    (folder / "READY").unlink()
    start = time.time()
    with time_machine.travel(start + 20, tick=False):
        (folder / "late_beam.ptn").write_text("# beam_number: 1\n1 150 0 0 0.1\n")  # 20 s in
        os.utime(folder / "late_beam.ptn", (start + 20, start + 20))
    quiet = get_config().scanner.quiet_period_sec

    with time_machine.travel(start + quiet + 1, tick=False):
        assert scan_cases(get_config()).incomplete == ["QA-3"]
    with time_machine.travel(start + 20 + quiet + 1, tick=False):
        assert scan_cases(get_config()).reported == ["QA-3"]


def test_each_case_is_reported_once_across_repeated_scans_and_restarts(stub_broker, watch_dir):
    make_case(watch_dir, "QA-4")
    first = scan_cases(get_config())
    deliver(reported(stub_broker))

    again = scan_cases(get_config())  # a repeated event, or a scanner restarted later
    events = scan_cases(get_config(), folders=["QA-4", "QA-4"])

    assert first.reported == ["QA-4"]
    assert again.reported == [] and events.reported == []
    assert reported(stub_broker) == []
    assert Case.objects.filter(case_id="QA-4").count() == 1


def test_an_invalid_folder_becomes_a_failed_case_with_the_reasons(stub_broker, watch_dir):
    folder = watch_dir / "QA-bad"
    folder.mkdir()
    (folder / "plan.dcm").write_text("not dicom")
    (folder / "READY").touch()

    result = scan_cases(get_config())
    deliver(reported(stub_broker))

    assert result.invalid == ["QA-bad"]
    case = Case.objects.get(case_id="QA-bad")
    assert case.status == Case.Status.FAILED
    assert "plan.dcm is not a DICOM file" in case.error_message
    assert "no machine log files matching '*.ptn'" in case.error_message


def test_a_ready_marker_is_noticed_through_file_events(stub_broker, watch_dir, tmp_path):
    triggers = Triggers(get_config(), lock=FileLeaderLock(tmp_path / "leader.lock"))
    triggers.start()
    try:
        drain(stub_broker, QUEUES["case_scanner"])
        folder = make_case(watch_dir, "QA-5")
        (folder / "READY").unlink()
        drain(stub_broker, QUEUES["case_scanner"])

        (folder / "READY").touch()

        def scan_requested() -> bool:
            return any(
                m.args[1].get("folders") == ["QA-5"]
                for m in drain(stub_broker, QUEUES["case_scanner"])
            )

        wait_for(scan_requested, 2, "a scan of QA-5 after its ready marker appeared")
    finally:
        triggers.stop()


def test_file_events_still_arrive_with_thousands_of_case_folders_in_the_watch_dir(
    stub_broker, watch_dir, tmp_path
):
    # Cases stay in the watched directory; listing them on start-up must not flood the
    # kernel's event queue (it did with 5,000 folders, and then no event arrived at all).
    for number in range(6000):
        (watch_dir / f"done-{number:05d}").mkdir()
    triggers = Triggers(get_config(), lock=FileLeaderLock(tmp_path / "leader.lock"))
    triggers.start()
    try:
        folder = make_case(watch_dir, "QA-6")
        (folder / "READY").unlink()
        drain(stub_broker, QUEUES["case_scanner"])

        (folder / "READY").touch()

        def scan_requested() -> bool:
            return any(
                m.args[1].get("folders") == ["QA-6"]
                for m in drain(stub_broker, QUEUES["case_scanner"])
            )

        wait_for(scan_requested, 5, "a scan of QA-6 after its ready marker appeared")
    finally:
        triggers.stop()


def test_only_one_scheduler_leads(tmp_path):
    first = FileLeaderLock(tmp_path / "leader.lock")
    second = FileLeaderLock(tmp_path / "leader.lock")

    assert first.hold() is True
    assert second.hold() is False
    first.release()
    assert second.hold() is True
    second.release()


def test_names_that_differ_only_by_unicode_normalisation_are_one_case(stub_broker, watch_dir):
    composed = "QA-caf\u00e9"  # é as one character (NFC)
    decomposed = "QA-cafe\u0301"  # e + combining acute (NFD, as macOS writes names)
    make_case(watch_dir, decomposed)

    first = scan_cases(get_config())
    deliver(reported(stub_broker))
    make_case(watch_dir, composed)
    second = scan_cases(get_config())

    assert first.reported == [composed]
    assert second.reported == []
    assert list(Case.objects.values_list("case_id", flat=True)) == [composed]


def test_a_folder_named_to_read_as_another_is_an_invalid_case(stub_broker, watch_dir):
    make_case(watch_dir, "QA-1\u202e3-AQ")

    result = scan_cases(get_config())
    deliver(reported(stub_broker))

    case = Case.objects.get()
    assert result.invalid == [case.case_id]
    assert "invisible formatting characters (U+202E)" in case.error_message
