"""Case folder completeness and validation: one test per rule, with an explicit ``now``."""

from __future__ import annotations

import os
import struct
import time
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cases import folder
from cases.folder import (
    RT_ION_PLAN_STORAGE,
    RT_PLAN_STORAGE,
    FolderState,
    case_id_problem,
    inspect_case_folder,
    iter_candidate_folders,
)

pytestmark = pytest.mark.pure

OLD = 1_700_000_000.0  # every file's mtime unless a test says otherwise
QUIET = 30.0
PATIENT = "QA-P1"


def log_text(beam: int = 1, patient: str = PATIENT) -> str:
    """A plain-text delivery log naming its patient and beam, as the stand-ins write."""
    return f"# patient_id: {patient}\n# beam_number: {beam}\n1 150.0 0.0 0.0 0.5\n"


def write_plan(
    path: Path,
    *,
    modality: str = "RTPLAN",
    sop_class: str = RT_ION_PLAN_STORAGE,
    beams: str | None = "IonBeamSequence",
    beam_count: int = 1,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = uid
    dataset.Modality = modality
    dataset.PatientID = PATIENT
    if beams:
        items = []
        for number in range(1, beam_count + 1):
            beam = Dataset()
            beam.BeamNumber = number
            items.append(beam)
        setattr(dataset, beams, Sequence(items))
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def age_everything(root: Path, mtime: float = OLD) -> None:
    """Give every entry (links themselves, not their targets) and the folder one mtime."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


def inspect(path: Path, *, now: float | None = None, **overrides):
    """Inspect with the shipped scanner settings; ``now`` defaults to an hour from now."""
    if now is None:
        now = time.time() + 3600
    options = {
        "ready_marker": "READY",
        "quiet_period_sec": QUIET,
        "rtplan_globs": ["*.dcm"],
        "log_patterns": ["*.ptn"],
    }
    options.update(overrides)
    return inspect_case_folder(path, now=now, **options)


@pytest.fixture
def case(tmp_path: Path) -> Path:
    """A valid case folder with its ready marker, last changed at OLD."""
    path = tmp_path / "incoming" / "QA-001"
    write_plan(path / "plan.dcm")
    (path / "beam1.ptn").write_text(log_text())
    (path / "READY").write_text("")
    age_everything(path)
    return path


NO_MARKER = {"ready_marker": ""}  # a site without a ready marker: the quiet period decides


# --- completeness -------------------------------------------------------------------------


def test_it_is_ready_with_the_marker_even_right_after_a_change(case: Path) -> None:
    verdict = inspect(case, now=OLD)

    assert verdict.state == FolderState.READY_VALID
    assert verdict.case_id == "QA-001"
    assert verdict.reasons == []
    assert verdict.rtplan_files == [case / "plan.dcm"]
    assert verdict.log_files == [case / "beam1.ptn"]
    assert verdict.newest_mtime == OLD


def test_with_a_marker_configured_a_folder_without_it_is_never_taken(case: Path) -> None:
    # copied with its files' times kept (cp -p, rsync -t): it looks a year old
    (case / "READY").unlink()
    age_everything(case, OLD - 365 * 86400)

    assert inspect(case).state == FolderState.INCOMPLETE
    assert inspect(case, now=OLD + 10 * 365 * 86400).state == FolderState.INCOMPLETE


def test_without_a_marker_it_is_incomplete_until_the_quiet_period_has_passed(
    case: Path,
) -> None:
    (case / "READY").unlink()
    age_everything(case)

    assert inspect(case, now=OLD + QUIET - 0.01, **NO_MARKER).state == FolderState.INCOMPLETE
    assert inspect(case, now=OLD + QUIET, **NO_MARKER).state == FolderState.READY_VALID


def test_a_file_still_being_copied_keeps_the_folder_incomplete(
    case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = case / "logs" / "day2" / "beam2.ptn"
    deep.parent.mkdir(parents=True)
    deep.write_text(log_text())
    age_everything(case)
    os.utime(deep, (OLD + 100, OLD + 100))  # still growing, two levels down
    monkeypatch.setattr(pydicom, "dcmread", _must_not_read)

    verdict = inspect(case, now=OLD + 110, **NO_MARKER)

    assert verdict.state == FolderState.INCOMPLETE
    assert verdict.newest_mtime == OLD + 100
    assert verdict.reasons == []


def test_the_folders_own_mtime_counts_as_a_change(case: Path) -> None:
    os.utime(case, (OLD + 100, OLD + 100))  # e.g. a file was just renamed or removed

    assert inspect(case, now=OLD + 110, **NO_MARKER).state == FolderState.INCOMPLETE


def test_an_incomplete_folder_is_not_validated_yet(tmp_path: Path) -> None:
    path = tmp_path / "bad\nname"
    path.mkdir()
    (path / "plan.dcm").write_text("not yet")

    verdict = inspect(path, now=time.time())

    assert verdict.state == FolderState.INCOMPLETE


def test_a_folder_that_disappears_is_incomplete(tmp_path: Path) -> None:
    verdict = inspect(tmp_path / "gone")

    assert verdict.state == FolderState.INCOMPLETE
    assert verdict.reasons == ["the folder disappeared while it was being inspected"]


# --- validation ---------------------------------------------------------------------------


def test_an_empty_folder_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "QA-002"
    path.mkdir()
    (path / "READY").write_text("")

    verdict = inspect(path)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == ["the case folder is empty (no RTPLAN, no machine log files)"]


def test_a_folder_without_rtplan_is_invalid(case: Path) -> None:
    (case / "plan.dcm").unlink()
    write_plan(case / "ct1.dcm", modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2", beams=None)

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == ["no RTPLAN among the files matching '*.dcm' (ct1.dcm: Modality CT)"]
    assert verdict.rtplan_files == []


def test_a_folder_without_any_dcm_says_what_it_looked_for(case: Path) -> None:
    (case / "plan.dcm").unlink()

    verdict = inspect(case)

    assert verdict.reasons == ["no RTPLAN DICOM file found (looked for '*.dcm')"]


def test_a_dcm_that_is_not_dicom_is_reported_by_name(case: Path) -> None:
    (case / "plan.dcm").write_text("%PDF-1.4 plan report\n")

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == ["plan.dcm is not a DICOM file"]


def test_a_photon_plan_found_by_sop_class_is_accepted(case: Path) -> None:
    write_plan(case / "plan.dcm", modality="", sop_class=RT_PLAN_STORAGE, beams="BeamSequence")

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_VALID
    assert verdict.rtplan_files == [case / "plan.dcm"]


@pytest.mark.parametrize("beams", [None, "IonBeamSequence", "BeamSequence"])
def test_an_rtplan_without_beams_is_invalid(case: Path, beams: str | None) -> None:
    write_plan(case / "plan.dcm", beams=beams, beam_count=0)

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == [
        "plan.dcm is an RTPLAN without beams (no IonBeamSequence or BeamSequence items)"
    ]


def test_an_rtplan_cut_short_is_invalid_not_read_as_a_smaller_plan(case: Path) -> None:
    whole = write_plan(case / "plan.dcm", beam_count=3).read_bytes()
    (case / "plan.dcm").write_bytes(whole[: len(whole) - 20])  # the last beam is cut

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    (reason,) = verdict.reasons
    assert reason.startswith("plan.dcm is cut short (element (300A,03A2) holds ")
    assert reason.endswith("; copy the complete file again")


def test_zero_byte_plan_and_log_files_are_reported_by_name(case: Path) -> None:
    (case / "beam2.ptn").write_bytes(b"")
    (case / "plan2.dcm").write_bytes(b"")
    (case / "notes.txt").write_bytes(b"")  # not an input: an empty extra file is harmless

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == ["plan2.dcm is empty (0 bytes)", "beam2.ptn is empty (0 bytes)"]


def test_unreadable_entries_are_reported_by_name(case: Path) -> None:
    # Tests run as root, so chmod 000 would still be readable: a dangling link and a
    # folder where a file is expected are unreadable for every user.
    (case / "plan2.dcm").symlink_to("missing-export.dcm")
    (case / "beam9.ptn").mkdir()

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == [
        "plan2.dcm is a broken symbolic link (its target is missing)",
        "beam9.ptn is a folder, not a file (it matches '*.ptn')",
    ]


def test_a_permission_error_on_open_is_reported(
    case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same rule as above for root: the open() the scanner does to prove readability.
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if os.fspath(path).endswith("beam1.ptn"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(folder.os, "open", refusing_open)

    verdict = inspect(case)

    assert verdict.reasons == [
        "beam1.ptn cannot be read: Permission denied",
        "no machine log files matching '*.ptn'",
    ]


def test_a_named_pipe_is_reported_without_blocking(case: Path) -> None:
    os.mkfifo(case / "beam2.ptn")

    verdict = inspect(case)

    assert verdict.reasons == ["beam2.ptn is not a regular file (a named pipe)"]


def test_a_symlink_outside_the_folder_is_reported_and_never_read(
    case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside_plan = write_plan(tmp_path / "elsewhere" / "other-patient.dcm")
    (case / "link.dcm").symlink_to(outside_plan)
    (case / "shared").symlink_to(outside_plan.parent, target_is_directory=True)
    read = _spy_on_dcmread(monkeypatch)

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == [
        "link.dcm points outside the case folder",
        "shared points outside the case folder",
    ]
    assert str(outside_plan) not in read
    assert read == [str(case / "plan.dcm")]


def test_a_symlink_inside_the_folder_is_followed(case: Path) -> None:
    (case / "exports").mkdir()
    (case / "plan.dcm").rename(case / "exports" / "plan.dcm")
    (case / "current.dcm").symlink_to("exports/plan.dcm")
    age_everything(case)

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_VALID
    assert verdict.rtplan_files == [case / "current.dcm", case / "exports" / "plan.dcm"]


@pytest.mark.parametrize(
    "patterns, missing",
    [
        (["*.ptn"], None),
        (["*.ptn", "*.mlog"], "*.mlog"),
        (["*.xml"], "*.xml"),
    ],
)
def test_every_log_pattern_must_match_a_file(
    case: Path, patterns: list[str], missing: str | None
) -> None:
    verdict = inspect(case, log_patterns=patterns)

    if missing is None:
        assert verdict.state == FolderState.READY_VALID
    else:
        assert verdict.state == FolderState.READY_INVALID
        assert verdict.reasons == [f"no machine log files matching '{missing}'"]


def test_patterns_ignore_case_and_match_in_subfolders(tmp_path: Path) -> None:
    path = tmp_path / "QA-003"
    write_plan(path / "RP.PLAN.DCM")
    (path / "Logs").mkdir()
    (path / "Logs" / "Beam1.PTN").write_text(log_text())
    (path / "READY").write_text("")

    verdict = inspect(path, log_patterns=["logs/*.ptn"])

    assert verdict.state == FolderState.READY_VALID
    assert verdict.rtplan_files == [path / "RP.PLAN.DCM"]
    assert verdict.log_files == [path / "Logs" / "Beam1.PTN"]


def test_hidden_files_are_not_taken_for_plans(case: Path) -> None:
    (case / "._plan.dcm").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork

    assert inspect(case).state == FolderState.READY_VALID


# --- case ids -----------------------------------------------------------------------------

WEIRD_BUT_VALID = [
    "QA 2024 05 01",
    "O'Brien",
    'say "cheese"',
    "$(rm -rf ~)",
    "`id`",
    "a; b && c | d",
    "Müller_山田_Ωμέγα",
    "x" * 200,
    "é" * 100,  # 200 bytes in UTF-8
]
INVALID = {
    "": "the case id (folder name) is empty",
    ".": "'.' cannot be a case id",
    "..": "'..' cannot be a case id",
    "a/b": "the folder name contains '/', which cannot be part of a case id",
    "a\x00b": "the folder name contains a NUL character",
    "é" * 101: "the folder name is 202 bytes long in UTF-8; a case id may be at most 200",
    "line\nbreak": "the folder name contains control characters (U+000A); rename the folder",
    "tab\tand\x7f": "the folder name contains control characters (U+0009, U+007F); "
    "rename the folder",
    "-rf": "the folder name starts with '-', which programs would take for an option",
    "bad\udcffbyte": "the folder name bad\\xffbyte is not valid UTF-8; rename the folder",
}


@pytest.mark.parametrize("name", WEIRD_BUT_VALID)
def test_weird_names_are_valid_case_ids(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_plan(path / "plan.dcm")
    (path / "beam1.ptn").write_text(log_text())
    (path / "READY").write_text("")

    verdict = inspect(path)

    assert case_id_problem(name) is None
    assert verdict.state == FolderState.READY_VALID
    assert verdict.case_id == name


@pytest.mark.parametrize("name, reason", INVALID.items(), ids=[repr(n)[:20] for n in INVALID])
def test_names_that_cannot_be_case_ids_are_refused(name: str, reason: str) -> None:
    assert case_id_problem(name) == reason


def test_a_folder_with_a_bad_name_is_invalid_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "QA\n001"
    write_plan(path / "plan.dcm")
    (path / "beam1.ptn").write_text(log_text())
    (path / "READY").write_text("")

    verdict = inspect(path)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == [
        "the folder name contains control characters (U+000A); rename the folder"
    ]


# --- candidates ---------------------------------------------------------------------------


def test_candidates_are_visible_subfolders_and_links_to_folders(tmp_path: Path) -> None:
    watch = tmp_path / "incoming"
    for name in ("b-case", "a-case", ".partial-copy", "archive/old-case"):
        (watch / name).mkdir(parents=True)
    (watch / "notes.txt").write_text("")
    (watch / "alias").symlink_to("archive/old-case")
    (tmp_path / "outside").mkdir()
    (watch / "escape").symlink_to(tmp_path / "outside")
    (watch / "loop").symlink_to(".")
    (watch / "dangling").symlink_to("nowhere")

    names = [path.name for path in iter_candidate_folders(watch)]

    # "escape" is listed so that it becomes a visible invalid case (never read, see below)
    assert names == ["a-case", "alias", "archive", "b-case", "escape"]


def test_a_case_folder_linked_from_outside_is_invalid_and_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere" / "QA-9"
    outside.mkdir(parents=True)
    (outside / "READY").write_text("")
    watch = tmp_path / "incoming"
    watch.mkdir()
    (watch / "QA-9").symlink_to(outside, target_is_directory=True)
    monkeypatch.setattr(folder.os, "scandir", _must_not_read)

    verdict = inspect(watch / "QA-9")

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == [
        f"the case folder is a symbolic link to {outside}, outside the watch directory; it is "
        "not read: copy the case folder into the watch directory instead"
    ]


def test_names_to_skip_are_not_yielded(tmp_path: Path) -> None:
    for name in ("QA-1", "QA-2", "QA-3"):
        (tmp_path / name).mkdir()

    names = [path.name for path in iter_candidate_folders(tmp_path, skip={"QA-2"})]

    assert names == ["QA-1", "QA-3"]


def test_a_ready_folder_is_walked_once(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (case / "logs").mkdir()
    (case / "logs" / "beam2.ptn").write_text(log_text())
    (case / "READY").write_text("")
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(folder.os, "scandir", counting_scandir)

    inspect(case)

    assert listed == [str(case), str(case / "logs")]


# --- helpers ------------------------------------------------------------------------------


def _must_not_read(*args, **kwargs):
    raise AssertionError("an incomplete folder must not be read")


def _spy_on_dcmread(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    real = pydicom.dcmread

    def spy(path, *args, **kwargs):
        read.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    return read


# --- hostile files and names --------------------------------------------------------------


def with_sparse_element(plan: Path, declared: int) -> None:
    """Append a private element that declares ``declared`` bytes and leave them as a hole in
    the file (a sparse file: it takes no disk, but a reader that loads it takes the memory)."""
    size = plan.stat().st_size
    header = struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, declared)
    with plan.open("r+b") as handle:
        handle.seek(size)
        handle.write(header)
        handle.truncate(size + len(header) + declared)


def test_a_plan_with_a_huge_element_is_refused_without_loading_it(case: Path) -> None:
    with_sparse_element(case / "plan.dcm", 1 << 30)

    tracemalloc.start()
    try:
        verdict = inspect(case)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == [
        "plan.dcm is an RTPLAN of 1,074 MB, larger than any plan should be "
        "(scanner.max_plan_mb is 64); it was not read: export the plan again"
    ]
    assert peak < 20_000_000  # the 1 GB element was never read into memory


def test_a_large_element_within_the_limit_is_not_read_into_memory(case: Path) -> None:
    with_sparse_element(case / "plan.dcm", 40_000_000)

    tracemalloc.start()
    try:
        verdict = inspect(case)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert verdict.state == FolderState.READY_VALID, verdict.reasons
    assert peak < 20_000_000


@pytest.mark.parametrize(
    "name, shown",
    [
        ("QA-1\u202e3-AQ", "U+202E"),  # right-to-left override
        ("QA\u200b-1", "U+200B"),  # zero-width space
        ("QA-\u2066x\u2069", "U+2066, U+2069"),  # isolates
        ("\ufeffQA-1", "U+FEFF"),
    ],
)
def test_names_that_read_as_something_else_are_refused(name: str, shown: str) -> None:
    assert case_id_problem(name) == (
        f"the folder name contains invisible formatting characters ({shown}) that change "
        "how it reads; rename the folder"
    )
