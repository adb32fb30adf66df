"""Bad case folders, all dropped into one watch directory and run through the whole system
by one ``runmqi --once``: each ends as a visible case with a reason a physicist can act on
(or COMPLETED, for names that are only strange), no handler crashes, and nothing outside
the case's own folders is read, written or run.

The table below is the corpus: one row per kind of bad input, with what it must end as.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pydicom
import pytest
from django.core.management import call_command
from django.test import override_settings

from cases.models import Case
from mqi_site.config import clear_config_cache
from mqi_site.messaging import ErrorKind
from tests.badinput.conftest import (
    INJECTED,
    Run,
    Site,
    files_under,
    injected_files,
    listing,
    make_site,
    run_mqi,
)
from tests.conftest import REPO_DIR

# The run happens once, in a module fixture, with committed data; the mark makes the test
# database exist and lets each test read it.
pytestmark = pytest.mark.django_db

FAILED, COMPLETED = Case.Status.FAILED, Case.Status.COMPLETED
OLD = 1_700_000_000  # an mtime far in the past: past any quiet period
CANARY = b"OUTSIDE-CANARY-7f3a9c"  # the content of every file in site.outside


# --- building bad folders: each returns the folder's name -----------------------------------


def empty_folder(site: Site) -> str:
    folder = site.watch_dir / "QA-empty"
    folder.mkdir()
    (folder / "READY").touch()  # marked ready, with nothing in it
    return folder.name


def no_rtplan(site: Site) -> str:
    folder = site.sample("QA-no-rtplan")
    for dicom in folder.glob("*.dcm"):  # the plan and the TPS dose beside it
        dicom.unlink()
    return folder.name


def dcm_that_is_not_dicom(site: Site) -> str:
    folder = site.sample("QA-not-dicom")
    (folder / "RP.plan.dcm").write_text("%PDF-1.4 treatment plan report\n")
    return folder.name


def dicom_that_is_not_a_plan(site: Site) -> str:
    folder = site.sample("QA-dose-not-plan")
    plan = pydicom.dcmread(folder / "RP.plan.dcm")
    plan.Modality = "RTDOSE"
    plan.SOPClassUID = plan.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"
    plan.save_as(folder / "RD.dose.dcm")
    (folder / "RP.plan.dcm").unlink()
    return folder.name


def rtplan_without_beams(site: Site) -> str:
    folder = site.sample("QA-no-beams")
    plan = pydicom.dcmread(folder / "RP.plan.dcm")
    del plan.IonBeamSequence
    plan.save_as(folder / "RP.plan.dcm")
    return folder.name


def rtplan_cut_short(site: Site) -> str:
    folder = site.sample("QA-cut-short")
    plan = folder / "RP.plan.dcm"
    plan.write_bytes(plan.read_bytes()[:-500])  # a copy that stopped early
    return folder.name


def zero_byte_files(site: Site) -> str:
    folder = site.sample("QA-zero-bytes")
    (folder / "RP.plan.dcm").write_bytes(b"")
    (folder / "QA0001_beam1.ptn").write_bytes(b"")
    return folder.name


def no_machine_logs(site: Site) -> str:
    folder = site.sample("QA-no-logs")
    for log in folder.glob("*.ptn"):
        log.unlink()
    return folder.name


def dangling_symlink(site: Site) -> str:
    folder = site.sample("QA-dangling")
    (folder / "QA0001_beam2.ptn").unlink()
    (folder / "QA0001_beam2.ptn").symlink_to("QA0001_beam2-export.ptn")
    return folder.name


def named_pipe(site: Site) -> str:
    folder = site.sample("QA-fifo")
    os.mkfifo(folder / "QA0001_beam3.ptn")  # unreadable even for root: it would block
    return folder.name


def folder_named_like_a_file(site: Site) -> str:
    folder = site.sample("QA-folder-not-file")
    (folder / "QA0001_beam2.ptn").unlink()
    (folder / "QA0001_beam2.ptn").mkdir()
    (folder / "QA0001_beam2.ptn" / "part1").write_text("1 150.0 0.0 0.0 0.5\n")
    return folder.name


def file_link_to_outside(site: Site) -> str:
    folder = site.sample("QA-link-out")
    (folder / "QA0001_beam2.ptn").unlink()
    (folder / "QA0001_beam2.ptn").symlink_to(site.outside / "canary.ptn")
    return folder.name


def subfolder_link_to_outside(site: Site) -> str:
    folder = site.sample("QA-subfolder-out")
    (folder / "logs").symlink_to(site.outside, target_is_directory=True)
    return folder.name


def case_folder_linked_from_outside(site: Site) -> str:
    (site.watch_dir / "QA-linked").symlink_to(
        site.outside / "QA-elsewhere", target_is_directory=True
    )
    return "QA-linked"


def many_broken_files(site: Site) -> str:
    folder = site.sample("QA-many-broken")
    for n in range(60):
        (folder / f"extra_{n:02}.ptn").write_bytes(b"")
    return folder.name


def malformed_machine_log(site: Site) -> str:
    folder = site.sample("QA-bad-log-line")
    with (folder / "QA0001_beam1.ptn").open("a") as log:
        log.write("1 150.000 twelve -12.00 0.41\n")
    return folder.name


def file_name_not_utf8(site: Site) -> str:
    folder = site.sample("QA-file-not-utf8")
    (folder / os.fsdecode(b"notes-\xe9.txt")).write_text("exported by an old tool\n")
    return folder.name


def named(name: str | bytes) -> Callable[[Site], str]:
    """A valid sample case under a strange name."""

    def build(site: Site) -> str:
        return site.sample(name).name

    return build


LONG_ASCII = "QA-" + "x" * 227  # 230 bytes
LONG_ACCENTS = "QA-" + "é" * 110  # 113 characters, 223 bytes
EXACTLY_200 = "QA-" + "y" * 197
NOT_UTF8 = os.fsdecode(b"QA-caf\xe9")
LOOKS_ESCAPED = "QA-caf\\xe9"  # a legal name, literally like the escaped form of NOT_UTF8


@dataclass(frozen=True)
class Bad:
    what: str
    build: Callable[[Site], str]
    status: str
    error_kind: str = ""
    reasons: tuple[str, ...] = ()


INVALID = ErrorKind.INVALID_INPUT
PERMANENT = ErrorKind.PERMANENT
CORPUS = [
    # contents
    Bad(
        "an empty folder",
        empty_folder,
        FAILED,
        INVALID,
        ("the case folder is empty (no RTPLAN, no machine log files)",),
    ),
    Bad(
        "no RTPLAN",
        no_rtplan,
        FAILED,
        INVALID,
        ("no RTPLAN DICOM file found (looked for '*.dcm')",),
    ),
    Bad(
        "a .dcm that is not DICOM",
        dcm_that_is_not_dicom,
        FAILED,
        INVALID,
        ("RP.plan.dcm is not a DICOM file",),
    ),
    Bad(
        "a DICOM file that is not an RTPLAN",
        dicom_that_is_not_a_plan,
        FAILED,
        INVALID,
        ("no RTPLAN among the files matching '*.dcm' (", "RD.dose.dcm: Modality RTDOSE"),
    ),
    Bad(
        "an RTPLAN with no beams",
        rtplan_without_beams,
        FAILED,
        INVALID,
        ("RP.plan.dcm is an RTPLAN without beams (no IonBeamSequence or BeamSequence items)",),
    ),
    Bad(
        "an RTPLAN cut short",
        rtplan_cut_short,
        FAILED,
        INVALID,
        ("RP.plan.dcm is cut short (element (300A,03A2) holds ", "copy the complete file again"),
    ),
    Bad(
        "zero-byte plan and log",
        zero_byte_files,
        FAILED,
        INVALID,
        ("RP.plan.dcm is empty (0 bytes)", "QA0001_beam1.ptn is empty (0 bytes)"),
    ),
    Bad(
        "no machine logs",
        no_machine_logs,
        FAILED,
        INVALID,
        ("no machine log files matching '*.ptn'",),
    ),
    Bad(
        "an unreadable file: a dangling symlink",
        dangling_symlink,
        FAILED,
        INVALID,
        ("QA0001_beam2.ptn is a broken symbolic link (its target is missing)",),
    ),
    Bad(
        "an unreadable file: a named pipe",
        named_pipe,
        FAILED,
        INVALID,
        ("QA0001_beam3.ptn is not a regular file (a named pipe)",),
    ),
    Bad(
        "an unreadable file: a folder named like a log",
        folder_named_like_a_file,
        FAILED,
        INVALID,
        ("QA0001_beam2.ptn is a folder, not a file (it matches '*.ptn')",),
    ),
    Bad(
        "a file symlinked to outside the watch directory",
        file_link_to_outside,
        FAILED,
        INVALID,
        ("QA0001_beam2.ptn points outside the case folder",),
    ),
    Bad(
        "a subfolder symlinked to outside the watch directory",
        subfolder_link_to_outside,
        FAILED,
        INVALID,
        ("logs points outside the case folder",),
    ),
    Bad(
        "the case folder itself symlinked to outside the watch directory",
        case_folder_linked_from_outside,
        FAILED,
        INVALID,
        (
            "the case folder is a symbolic link to ",
            "outside the watch directory; it is not read: copy the case folder into the "
            "watch directory instead",
        ),
    ),
    Bad(
        "sixty broken files (the reasons are capped)",
        many_broken_files,
        FAILED,
        INVALID,
        ("extra_00.ptn is empty (0 bytes)", "; ... and 10 more problems"),
    ),
    Bad(
        "a machine log the interpreter cannot read",
        malformed_machine_log,
        FAILED,
        PERMANENT,
        (
            "run_interpreter failed: exited with code 1: ",
            "QA0001_beam1.ptn line 110: expected 'layer energy_mev x_mm y_mm mu', "
            "got '1 150.000 twelve -12.00 0.41'",
        ),
    ),
    Bad(
        "a file name inside that is not UTF-8",
        file_name_not_utf8,
        FAILED,
        INVALID,
        ("notes-\\xe9.txt has a name that is not valid UTF-8; rename it",),
    ),
    # names that cannot be case ids
    Bad(
        "a name with a newline",
        named("QA-line\nbreak"),
        FAILED,
        INVALID,
        ("the folder name contains control characters (U+000A); rename the folder",),
    ),
    Bad(
        "a name starting with '-'",
        named("-QA-dash"),
        FAILED,
        INVALID,
        ("the folder name starts with '-', which programs would take for an option",),
    ),
    Bad(
        "a name longer than 200 bytes",
        named(LONG_ASCII),
        FAILED,
        INVALID,
        ("the folder name is 230 bytes long in UTF-8; a case id may be at most 200",),
    ),
    Bad(
        "a non-ASCII name longer than 200 bytes",
        named(LONG_ACCENTS),
        FAILED,
        INVALID,
        ("the folder name is 223 bytes long in UTF-8; a case id may be at most 200",),
    ),
    Bad(
        "a name that is not UTF-8",
        named(NOT_UTF8),
        FAILED,
        INVALID,
        ("the folder name QA-caf\\xe9 is not valid UTF-8; rename the folder",),
    ),
    # names that are only strange: quoted everywhere, so they run
    Bad("a name with spaces", named("QA 0001 with  spaces"), COMPLETED),
    Bad("a name with quotes", named("QA 'single' \"double\""), COMPLETED),
    Bad("a name with $(...)", named("QA $(touch INJECTED_1)"), COMPLETED),
    Bad("a name with backticks", named("QA `touch INJECTED_2`"), COMPLETED),
    Bad("a name with ';'", named("QA; touch INJECTED_3"), COMPLETED),
    Bad("a name with && | >", named("QA && touch INJECTED_4 | tee INJECTED_5 > x"), COMPLETED),
    Bad("a name closing a quote", named("QA' ; touch INJECTED_6 ; '"), COMPLETED),
    Bad("a name with $VAR, globs, ~ and #", named("QA ${HOME} $IFS * ?[a] ~ #x"), COMPLETED),
    Bad("a non-ASCII name", named("QA-Müller-日本-ščř-🙂"), COMPLETED),
    Bad("a name of exactly 200 bytes", named(EXACTLY_200), COMPLETED),
    Bad("a name like another's escaped form", named(LOOKS_ESCAPED), COMPLETED),
]


def still_being_copied(site: Site) -> str:
    folder = site.sample("QA-copying")
    (folder / "READY").unlink()  # no marker yet, and written just now
    return folder.name


def hidden_partial_copy(site: Site) -> str:
    return site.sample(".QA-partial").name


def two_long_names_with_one_prefix(site: Site) -> list[str]:
    return [site.sample("L" * 210 + suffix).name for suffix in ("-one", "-two")]


def outside_canaries(site: Site) -> None:
    """What bad folders point at: a log-like file and a whole valid case, both marked."""
    (site.outside / "canary.ptn").write_bytes(CANARY + b"\n")
    elsewhere = site.sample("QA-elsewhere")
    elsewhere.rename(site.outside / "QA-elsewhere")
    (site.outside / "QA-elsewhere" / "CANARY_OUTSIDE.txt").write_bytes(CANARY)


# --- one run for the whole corpus -------------------------------------------------------------


def expected_case_id(name: str) -> str:
    """The id a folder's case gets: its name, unless that is too long or not UTF-8 (then
    escaped and cut to 186 characters, plus ``~`` and 12 hex digits of its SHA-256)."""
    raw = name.encode("utf-8", "surrogateescape")
    shown = raw.decode("utf-8", "backslashreplace")
    if len(name) <= 200 and shown == name:
        return name
    return shown[:186] + "~" + hashlib.sha256(raw).hexdigest()[:12]


@dataclass
class Outcome:
    site: Site
    run: Run
    cases: dict[str, Case]
    steps: dict[str, list[str]]  # case id -> names of its step runs
    names: dict[str, str]  # corpus row -> folder name
    long_pair: list[str]
    outside_before: dict[str, tuple[int, float]]
    outside_after: dict[str, tuple[int, float]]
    outside_atimes: dict[str, float]
    neighbours_before: list[str]
    neighbours_after: list[str]

    def case(self, folder_name: str) -> Case:
        return self.cases[expected_case_id(folder_name)]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, django_db_setup, django_db_blocker) -> Iterator[Outcome]:
    root = tmp_path_factory.mktemp("corpus")
    site = make_site(root / "site")
    outside_canaries(site)
    names = {row.what: row.build(site) for row in CORPUS}
    long_pair = two_long_names_with_one_prefix(site)
    still_being_copied(site)
    hidden_partial_copy(site)
    outside_before = listing(site.outside)
    # Reading a file or listing a folder moves its access time past 0: proof of a read.
    watched = [site.outside, *(site.outside / relative for relative in outside_before)]
    for path in watched:
        os.utime(path, (0, path.lstat().st_mtime), follow_symlinks=False)
    neighbours_before = sorted(os.listdir(root.parent))

    with override_settings(MQI_CONFIG=site.config_path), django_db_blocker.unblock():
        clear_config_cache()
        try:
            run = run_mqi("--once", "--timeout", "120")
            cases = {case.case_id: case for case in Case.objects.all()}
            steps = {
                case_id: list(case.steps.order_by("pk").values_list("name", flat=True))
                for case_id, case in cases.items()
            }
        finally:
            clear_config_cache()
    atimes = {str(path): path.lstat().st_atime for path in watched}
    yield Outcome(
        site=site,
        run=run,
        cases=cases,
        steps=steps,
        names=names,
        long_pair=long_pair,
        outside_before=outside_before,
        outside_after=listing(site.outside),
        outside_atimes=atimes,
        neighbours_before=neighbours_before,
        neighbours_after=sorted(os.listdir(root.parent)),
    )
    with django_db_blocker.unblock():
        call_command("flush", interactive=False, verbosity=0)  # cases, GPUs: all committed


# --- every row ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", CORPUS, ids=[row.what for row in CORPUS])
def test_a_bad_folder_ends_as_a_visible_case_with_its_reason(outcome: Outcome, bad: Bad):
    case = outcome.case(outcome.names[bad.what])

    assert case.status == bad.status, case.error_message
    assert case.error_kind == bad.error_kind
    for reason in bad.reasons:
        assert reason in case.error_message
    if bad.error_kind == ErrorKind.INVALID_INPUT:
        assert case.error_message.startswith("invalid case folder: ")
        assert outcome.steps[case.case_id] == []  # nothing was uploaded, nothing ran


@pytest.mark.parametrize(
    "bad", [row for row in CORPUS if row.status == COMPLETED], ids=lambda row: row.what
)
def test_a_strange_but_valid_name_gets_its_results_under_that_name(outcome: Outcome, bad: Bad):
    name = outcome.names[bad.what]
    case = outcome.case(name)

    assert case.case_id == name
    assert (outcome.site.results(name) / "RTDOSE.dcm").is_file()
    assert outcome.site.starts(name, "interpreter") == 1
    assert f"Completed  {name}  ->" in outcome.run.stdout


# --- the run as a whole ---------------------------------------------------------------------------


def test_every_complete_folder_became_exactly_one_case(outcome: Outcome):
    folders = [*outcome.names.values(), *outcome.long_pair]

    assert sorted(outcome.cases) == sorted(expected_case_id(name) for name in folders)


def test_a_folder_still_being_copied_is_left_for_a_later_run(outcome: Outcome):
    assert "not complete yet, left for a later run: QA-copying" in outcome.run.stdout
    assert "QA-copying" not in outcome.cases


def test_a_hidden_folder_is_never_a_case(outcome: Outcome):
    assert not [case_id for case_id in outcome.cases if "QA-partial" in case_id]


def test_two_long_names_with_one_prefix_are_two_cases(outcome: Outcome):
    first, second = (outcome.case(name) for name in outcome.long_pair)

    assert first.case_id != second.case_id
    for case in (first, second):
        assert len(case.case_id) == 199 and case.case_id.startswith("L" * 186 + "~")
        assert case.status == FAILED
        assert "the folder name is 214 bytes long in UTF-8" in case.error_message


def test_a_name_that_is_not_utf8_does_not_take_a_real_names_case_id(outcome: Outcome):
    bad = outcome.case(NOT_UTF8)
    literal = outcome.case(LOOKS_ESCAPED)

    assert bad.case_id.startswith("QA-caf\\xe9~")
    assert literal.case_id == LOOKS_ESCAPED
    assert (bad.status, literal.status) == (FAILED, COMPLETED)


def test_runmqi_lists_every_case_with_its_reason_and_says_some_failed(outcome: Outcome):
    assert outcome.run.code == 1
    for case in outcome.cases.values():
        if case.status == FAILED:
            assert f"Failed     {case.case_id}  {case.error_message}" in outcome.run.stdout


def test_no_handler_crashed(outcome: Outcome):
    assert outcome.run.crashes() == []
    assert "internal error" not in "".join(c.error_message for c in outcome.cases.values())


def test_nothing_outside_the_watch_directory_was_read_or_written(outcome: Outcome):
    assert outcome.outside_after == outcome.outside_before
    assert [path for path, atime in outcome.outside_atimes.items() if atime != 0] == []
    assert outcome.neighbours_after == outcome.neighbours_before


def test_no_outside_file_reached_the_gpu_server_or_the_results(outcome: Outcome):
    copied = [
        path
        for path in files_under(*outcome.site.written_trees())
        if path.name == "CANARY_OUTSIDE.txt" or CANARY in path.read_bytes()
    ]

    assert copied == []
    assert not (outcome.site.upload_dir / "QA-elsewhere").exists()
    assert not (outcome.site.upload_dir / "QA-linked").exists()


def test_no_injected_command_ran(outcome: Outcome):
    assert injected_files(outcome.site.root, REPO_DIR) == []
    assert len(INJECTED) >= 6
