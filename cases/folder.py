"""Is a case folder complete, and is it a valid QA case? Pure functions over the file system.

A case folder is *complete* when its ready-marker file exists.  Only a site that runs
without a marker (``ready_marker: ""``) relies on the quiet period instead: complete once
nothing changed for ``quiet_period_sec``.  "Changed" means the newest modification time of
any entry at any depth (symbolic links themselves, never their targets) and of the folder
itself, so a copy that is still adding or growing files keeps the folder ``INCOMPLETE``.
With a marker configured, old-looking files never make a folder complete (a copy that
keeps the files' times, as ``cp -p`` or ``rsync -t`` do, would look finished at once).

A complete folder is then validated.  Every problem found becomes one sentence a physicist
can act on ("plan.dcm is not a DICOM file"); the folder is ``READY_INVALID`` when there is
at least one.  The rules:

* the folder name is the case id and must be usable as one (:func:`case_id_problem`);
* exactly one readable RTPLAN among the files matching ``rtplan_globs``; it has treatment
  beams (``IonBeamSequence`` or ``BeamSequence`` items that are not setup beams) and is
  whole (a file cut short is refused, not read as a smaller plan);
* every pattern in ``log_patterns`` matches at least one file;
* with ``check_log_identity``, the logs belong to the plan: every log names the plan's
  patient and one of its treatment beams, and every treatment beam has a log
  (:mod:`cases.identity`);
* plan and log files are not empty;
* no entry is unreadable: a broken symbolic link, a folder where a file is expected, a
  device or FIFO, a permission problem;
* no symbolic link points outside the case folder, and the case folder itself is not a
  link leading out of the watch directory; such a link is never followed or read (the
  folder is uploaded as a whole, so it would leak whatever it points at).

Glob patterns are matched case-insensitively (``PLAN.DCM`` is a ``*.dcm``).  A pattern
without ``/`` matches a file name at any depth; one with ``/`` matches the path relative to
the case folder, segment by segment.  Hidden entries (a name starting with ``.``, such as
``._plan.dcm`` from macOS) never match a pattern, but they count for the quiet period and
for the link and readability checks.

The folder is walked once, with ``os.scandir``; DICOM files are read only when the folder
is complete.
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
import unicodedata
from collections import deque
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from cases import manifest as manifests
from cases.identity import HEADER_BYTES, PLAN_INFO_NAME, PlanIdentity, log_problems, plan_identity

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RT_ION_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.8"
PLAN_SOP_CLASSES = frozenset({RT_PLAN_STORAGE, RT_ION_PLAN_STORAGE})
CASE_ID_MAX_BYTES = 200
# Elements longer than this are not read into memory (pydicom notes where they are and
# skips them): what identifies a plan is small, whatever else the file carries.
DEFER_BYTES = 64 * 1024
MAX_PLAN_MB = 64  # scanner.max_plan_mb
UNDEFINED_LENGTH = 0xFFFFFFFF
# A folder with thousands of broken files should not produce thousands of reasons.
MAX_REASONS = 50


class FolderState(enum.StrEnum):
    INCOMPLETE = "INCOMPLETE"  # still being written; look again later
    READY_VALID = "READY_VALID"
    READY_INVALID = "READY_INVALID"


class LogCheck(enum.StrEnum):
    """Whether the delivery logs were matched against the plan's patient and beams."""

    PASSED = "passed"
    FAILED = "failed"
    OFF = "off"  # scanner.check_log_identity is false
    NOT_REACHED = ""  # no readable plan to match them against


@dataclass
class FolderVerdict:
    """What :func:`inspect_case_folder` found.

    ``reasons`` is empty unless the state is ``READY_INVALID`` (or the folder disappeared
    while it was inspected, which is ``INCOMPLETE``).  ``rtplan_files`` holds the RTPLANs
    that were read successfully, ``log_files`` every file matching a log pattern; both are
    sorted and filled for invalid folders too.  ``identity`` is the plan's, when exactly
    one plan was read.  ``newest_mtime`` is the newest modification time seen (the
    folder's own included), in seconds since the epoch.
    """

    case_id: str
    state: FolderState
    reasons: list[str] = field(default_factory=list)
    rtplan_files: list[Path] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    newest_mtime: float = 0.0
    identity: PlanIdentity | None = None
    log_check: LogCheck = LogCheck.NOT_REACHED


def case_id_problem(name: str) -> str | None:
    """Why ``name`` cannot be a case id, or ``None`` when it can.

    Case ids are quoted wherever they reach a shell or a path, so spaces, quotes, ``$()``,
    ``;`` and non-ASCII letters are fine.  What is refused cannot be a single path segment,
    cannot be stored or shown faithfully, or would be read as a command-line option.
    """
    if not name:
        return "the case id (folder name) is empty"
    if name in (".", ".."):
        return f"'{name}' cannot be a case id"
    if "/" in name:
        return "the folder name contains '/', which cannot be part of a case id"
    if "\x00" in name:
        return "the folder name contains a NUL character"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"the folder name {_shown(name)} is not valid UTF-8; rename the folder"
    if size > CASE_ID_MAX_BYTES:
        return (
            f"the folder name is {size} bytes long in UTF-8; "
            f"a case id may be at most {CASE_ID_MAX_BYTES}"
        )
    controls = sorted({char for char in name if unicodedata.category(char) in ("Cc", "Zl", "Zp")})
    if controls:
        listed = ", ".join(f"U+{ord(char):04X}" for char in controls)
        return f"the folder name contains control characters ({listed}); rename the folder"
    # bidirectional overrides, zero-width and other format characters: a name that shows
    # as something else than it is (``QA-1\u202e3-AQ`` reads as ``QA-1QA-3``)
    hidden = sorted({char for char in name if unicodedata.category(char) == "Cf"})
    if hidden:
        listed = ", ".join(f"U+{ord(char):04X}" for char in hidden)
        return (
            f"the folder name contains invisible formatting characters ({listed}) that "
            "change how it reads; rename the folder"
        )
    if name.startswith("-"):
        return "the folder name starts with '-', which programs would take for an option"
    return None


def iter_candidate_folders(
    watch_dir: Path, *, skip: Container[str] = frozenset()
) -> Iterator[Path]:
    """The case folders directly inside ``watch_dir``, sorted by name.

    Hidden entries are skipped, and so are names in ``skip`` (the known case ids: checked
    before a ``Path`` is built, which is most of the cost; 10,000 folders take ~40 ms
    without ``skip`` and under 10 ms with it).  A symbolic link to a folder is a candidate
    too, so one pointing outside ``watch_dir`` becomes a visible invalid case
    (:func:`inspect_case_folder` never reads it); a link to ``watch_dir`` itself is not.
    """
    real_watch_dir: str | None = None
    with os.scandir(watch_dir) as listing:
        entries = sorted(
            (
                entry
                for entry in listing
                if not entry.name.startswith(".") and entry.name not in skip
            ),
            key=lambda entry: entry.name,
        )
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)
        elif entry.is_symlink():
            if real_watch_dir is None:
                real_watch_dir = os.path.realpath(watch_dir)
            target = os.path.realpath(entry.path)
            if target != real_watch_dir and os.path.isdir(target):
                yield Path(entry.path)


def inspect_case_folder(
    path: Path,
    *,
    ready_marker: str,
    quiet_period_sec: float,
    rtplan_globs: Sequence[str],
    log_patterns: Sequence[str],
    now: float,
    check_log_identity: bool = True,
    max_plan_mb: float = MAX_PLAN_MB,
) -> FolderVerdict:
    """Decide whether the case folder at ``path`` is still being written, valid or invalid."""
    case_id = path.name
    escape = folder_link_problem(path)
    if escape:
        return FolderVerdict(case_id, FolderState.READY_INVALID, [escape])
    try:
        walk = _walk(path, ready_marker)
    except (FileNotFoundError, NotADirectoryError):
        return FolderVerdict(
            case_id,
            FolderState.INCOMPLETE,
            ["the folder disappeared while it was being inspected"],
        )
    if not _complete(walk, ready_marker, quiet_period_sec, now):
        return FolderVerdict(case_id, FolderState.INCOMPLETE, newest_mtime=walk.newest_mtime)

    reasons: list[str] = []
    name_problem = case_id_problem(case_id)
    if name_problem:
        reasons.append(name_problem)
    reasons.extend(walk.problems)
    checked = _check_contents(walk, rtplan_globs, log_patterns, max_plan_mb)
    reasons.extend(checked.reasons)
    log_check = LogCheck.NOT_REACHED
    if checked.identity is not None and not checked.reasons:
        log_check = LogCheck.OFF
        if check_log_identity:
            mismatches = _check_logs(walk, checked)
            reasons.extend(mismatches)
            log_check = LogCheck.FAILED if mismatches else LogCheck.PASSED
    if len(reasons) > MAX_REASONS:
        hidden = len(reasons) - MAX_REASONS
        reasons = [*reasons[:MAX_REASONS], f"... and {hidden} more problems"]
    return FolderVerdict(
        case_id,
        FolderState.READY_INVALID if reasons else FolderState.READY_VALID,
        reasons,
        rtplan_files=[path / rel for rel in checked.rtplans],
        log_files=[path / rel for rel in checked.logs],
        newest_mtime=walk.newest_mtime,
        identity=checked.identity,
        log_check=log_check,
    )


@dataclass
class FolderCheck:
    """A verdict with the folder's manifest (empty when the folder is not valid)."""

    verdict: FolderVerdict
    manifest: manifests.Manifest = field(default_factory=list)


def check_case_folder(path: Path, scanner: ScannerRules, *, now: float) -> FolderCheck:
    """The scanner's rules and the manifest, for a new folder or a case about to restart.

    The manifest is taken between two cheap looks at every file (size, mtime, inode): a
    folder that changed while it was checked is reported ``INCOMPLETE`` and looked at
    again later, so the files hashed are the files that were validated.
    """
    before = None  # a folder that cannot be listed as a whole: the verdict says why
    if folder_link_problem(path) is None:  # never list what a link out points at
        with contextlib.suppress(manifests.ManifestError):
            before = manifests.signature(path)
    verdict = inspect_case_folder(
        path,
        ready_marker=scanner.ready_marker,
        quiet_period_sec=scanner.quiet_period_sec,
        rtplan_globs=scanner.rtplan_globs,
        log_patterns=scanner.log_patterns,
        check_log_identity=scanner.check_log_identity,
        max_plan_mb=scanner.max_plan_mb,
        now=now,
    )
    if verdict.state != FolderState.READY_VALID:
        return FolderCheck(verdict)
    try:
        manifest = manifests.folder_manifest(path)
        changed = before != manifests.signature(path)
    except manifests.FolderChanging:
        changed = True
    except manifests.ManifestError as exc:
        verdict.state = FolderState.READY_INVALID
        verdict.reasons.append(str(exc))
        return FolderCheck(verdict)
    if changed:
        reason = "the folder changed while it was being checked; it is looked at again"
        return FolderCheck(FolderVerdict(verdict.case_id, FolderState.INCOMPLETE, [reason]))
    return FolderCheck(verdict, manifest)


def folder_facts(check: FolderCheck) -> dict[str, Any]:
    """What a check found besides its reasons, as message payload: the plan's identity,
    whether the logs were matched to it, and the manifest."""
    identity = check.verdict.identity
    return {
        "plan": identity.as_payload() if identity is not None else None,
        "log_check": str(check.verdict.log_check),
        "manifest": check.manifest,
    }


class ScannerRules(Protocol):
    """The settings :func:`check_case_folder` needs (``config.scanner``)."""

    ready_marker: str
    quiet_period_sec: float
    rtplan_globs: Sequence[str]
    log_patterns: Sequence[str]
    check_log_identity: bool
    max_plan_mb: float


def _complete(walk: _Walk, ready_marker: str, quiet_period_sec: float, now: float) -> bool:
    if ready_marker:
        return walk.has_marker
    return now - walk.newest_mtime >= quiet_period_sec


def folder_link_problem(path: Path) -> str | None:
    """Why a case folder that is a symbolic link leading out of the watch directory must not
    be read (the upload would copy whatever it points at), or None."""
    if not path.is_symlink():
        return None
    target = os.path.realpath(path)
    parent = os.path.realpath(path.parent)
    if target != parent and _is_within(target, parent):
        return None
    return (
        f"the case folder is a symbolic link to {_shown(target)}, outside the watch "
        "directory; it is not read: copy the case folder into the watch directory instead"
    )


# --- walking the folder -------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    rel: str  # path relative to the case folder, '/'-separated
    read_path: str  # where to read it (a link inside the folder: its resolved target)
    size: int
    hidden: bool


@dataclass
class _Walk:
    newest_mtime: float
    has_marker: bool = False
    files: list[_File] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # visible subfolders, relative
    entries: int = 0  # everything seen except the ready marker
    problems: list[str] = field(default_factory=list)


def _walk(path: Path, ready_marker: str) -> _Walk:
    """One pass over the folder: modification times, files, and entries that are unsafe.

    Raises ``FileNotFoundError``/``NotADirectoryError`` if the folder itself is gone.
    """
    root = os.fspath(path)
    real_root = os.path.realpath(root)
    walk = _Walk(newest_mtime=os.stat(root).st_mtime)
    pending: deque[tuple[str, str, bool]] = deque([("", root, False)])
    while pending:
        rel_dir, abs_dir, hidden_dir = pending.popleft()
        try:
            with os.scandir(abs_dir) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            if not rel_dir:
                raise
            continue  # a subfolder removed while we walk: its parent's mtime is new
        except OSError as exc:
            walk.problems.append(f"{_shown(rel_dir or '.')} cannot be listed: {_why(exc)}")
            continue
        for entry in entries:
            _visit(walk, entry, rel_dir, hidden_dir, real_root, ready_marker, pending)
    return walk


def _visit(
    walk: _Walk,
    entry: os.DirEntry[str],
    rel_dir: str,
    hidden_dir: bool,
    real_root: str,
    ready_marker: str,
    pending: deque[tuple[str, str, bool]],
) -> None:
    rel = rel_dir + entry.name
    hidden = hidden_dir or entry.name.startswith(".")
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return  # removed since the listing; the folder's mtime says it changed
    except OSError as exc:
        walk.problems.append(f"{_shown(rel)} cannot be read: {_why(exc)}")
        return
    walk.newest_mtime = max(walk.newest_mtime, info.st_mtime)
    if not _is_utf8(entry.name):
        # it could not be stored in the manifest, shown faithfully, or named in a command
        walk.problems.append(f"{_shown(rel)} has a name that is not valid UTF-8; rename it")
        return
    if not rel_dir and ready_marker and entry.name == ready_marker and stat.S_ISREG(info.st_mode):
        walk.has_marker = True
        return
    walk.entries += 1
    if stat.S_ISDIR(info.st_mode):
        pending.append((rel + "/", entry.path, hidden))
        if not hidden:
            walk.folders.append(rel)
    elif stat.S_ISLNK(info.st_mode):
        _visit_link(walk, entry.path, rel, hidden, real_root)
    elif stat.S_ISREG(info.st_mode):
        _add_file(walk, _File(rel, entry.path, info.st_size, hidden), no_follow=True)
    else:
        walk.problems.append(f"{_shown(rel)} is not a regular file ({_kind(info.st_mode)})")


def _visit_link(walk: _Walk, link: str, rel: str, hidden: bool, real_root: str) -> None:
    """A symbolic link: resolved by name only; its target is touched only if it is inside."""
    target = os.path.realpath(link)
    if not _is_within(target, real_root):
        walk.problems.append(f"{_shown(rel)} points outside the case folder")
        return
    try:
        info = os.stat(target)
    except FileNotFoundError:
        walk.problems.append(f"{_shown(rel)} is a broken symbolic link (its target is missing)")
        return
    except OSError as exc:
        walk.problems.append(f"{_shown(rel)} cannot be read: {_why(exc)}")
        return
    if stat.S_ISREG(info.st_mode):
        _add_file(walk, _File(rel, target, info.st_size, hidden), no_follow=False)
    elif not stat.S_ISDIR(info.st_mode):
        walk.problems.append(f"{_shown(rel)} is not a regular file ({_kind(info.st_mode)})")
    # a link to a folder inside the case is not walked (no loops, no double counting)


def _add_file(walk: _Walk, file: _File, *, no_follow: bool) -> None:
    # Opening proves readability for any user (os.access is always true for root, and
    # the upload reads every file); O_NONBLOCK is harmless for regular files.
    flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if no_follow else 0)
    try:
        os.close(os.open(file.read_path, flags))
    except FileNotFoundError:
        return  # removed since the listing
    except OSError as exc:
        walk.problems.append(f"{_shown(file.rel)} cannot be read: {_why(exc)}")
        return
    walk.files.append(file)


# --- checking the contents ----------------------------------------------------------------


@dataclass
class _Checked:
    reasons: list[str] = field(default_factory=list)
    rtplans: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    plan_infos: list[str] = field(default_factory=list)
    identity: PlanIdentity | None = None  # of the one plan, when there is exactly one


def _check_contents(
    walk: _Walk, rtplan_globs: Sequence[str], log_patterns: Sequence[str], max_plan_mb: float
) -> _Checked:
    checked = _Checked()
    if walk.entries == 0:
        checked.reasons.append("the case folder is empty (no RTPLAN, no machine log files)")
        return checked
    visible = sorted((file for file in walk.files if not file.hidden), key=lambda f: f.rel)
    for folder in walk.folders:
        for pattern in [*rtplan_globs, *log_patterns]:
            if _matches(folder, pattern):
                checked.reasons.append(
                    f"{_shown(folder)} is a folder, not a file (it matches '{pattern}')"
                )
                break
    candidates = [f for f in visible if any(_matches(f.rel, g) for g in rtplan_globs)]
    not_plans: list[str] = []
    plan_problems = 0
    plans: dict[str, tuple[str, PlanIdentity]] = {}  # by SOPInstanceUID: copies are one plan
    for file in candidates:
        if file.size == 0:
            read = _PlanRead(problem=f"{_shown(file.rel)} is empty (0 bytes)")
        else:
            read = _read_plan(file, max_plan_mb)
        if read.problem:
            plan_problems += 1
            checked.reasons.append(read.problem)
        elif read.identity is not None:
            checked.rtplans.append(file.rel)
            plans.setdefault(read.sop_instance_uid or file.rel, (file.rel, read.identity))
        else:
            not_plans.append(f"{_shown(file.rel)}: {read.description}")
    # A candidate that could not be read already has its own reason; "no RTPLAN" on top of
    # "plan.dcm is not a DICOM file" would only repeat it.
    if not checked.rtplans and not plan_problems:
        checked.reasons.append(_no_plan_reason(rtplan_globs, not_plans))
    if len(plans) > 1:
        names = ", ".join(_shown(rel) for rel, _ in plans.values())
        checked.reasons.append(
            f"the folder holds {len(plans)} different RTPLANs ({names}); a case folder holds "
            "the one plan that was delivered"
        )
    elif len(plans) == 1 and not plan_problems:
        checked.identity = next(iter(plans.values()))[1]
    checked.plan_infos = [f.rel for f in visible if _base_name(f.rel).lower() == PLAN_INFO_NAME]
    for pattern in log_patterns:
        matched = [file for file in visible if _matches(file.rel, pattern)]
        if not matched:
            checked.reasons.append(f"no machine log files matching '{pattern}'")
        for file in matched:
            if file.size == 0:
                checked.reasons.append(f"{_shown(file.rel)} is empty (0 bytes)")
            if file.rel not in checked.logs:
                checked.logs.append(file.rel)
    checked.logs.sort()
    return checked


def _no_plan_reason(rtplan_globs: Sequence[str], not_plans: list[str]) -> str:
    looked_for = ", ".join(f"'{glob}'" for glob in rtplan_globs) or "(no rtplan_globs set)"
    if not_plans:
        return f"no RTPLAN among the files matching {looked_for} ({'; '.join(not_plans)})"
    return f"no RTPLAN DICOM file found (looked for {looked_for})"


@dataclass
class _PlanRead:
    """One candidate read: a plan (``identity``), a problem, or what it is instead."""

    identity: PlanIdentity | None = None
    sop_instance_uid: str = ""
    problem: str | None = None
    description: str = ""


def _read_plan(file: _File, max_plan_mb: float) -> _PlanRead:
    shown = _shown(file.rel)
    try:
        dataset = pydicom.dcmread(file.read_path, stop_before_pixels=True, defer_size=DEFER_BYTES)
        cut = _cut_short(dataset, file.size)
        if cut:
            return _PlanRead(problem=f"{shown} is cut short ({cut}); copy the complete file again")
        modality = str(dataset.get("Modality", "") or "")
        sop_class = str(dataset.get("SOPClassUID", "") or "")
        if modality != "RTPLAN" and sop_class not in PLAN_SOP_CLASSES:
            return _PlanRead(description=f"Modality {modality}" if modality else "no Modality")
        if file.size > max_plan_mb * 1e6:
            return _PlanRead(
                problem=f"{shown} is an RTPLAN of {file.size / 1e6:,.0f} MB, larger than any "
                f"plan should be (scanner.max_plan_mb is {max_plan_mb:g}); it was not read: "
                "export the plan again"
            )
        beams = dataset.get("IonBeamSequence") or dataset.get("BeamSequence")
        identity = plan_identity(dataset)
        uid = str(dataset.get("SOPInstanceUID", "") or "")
    except InvalidDicomError:
        return _PlanRead(problem=f"{shown} is not a DICOM file")
    except OSError as exc:
        return _PlanRead(problem=f"{shown} cannot be read: {_why(exc)}")
    except Exception as exc:  # noqa: BLE001
        # pydicom parsing untrusted bytes can fail in many ways; each is a finding about
        # this file, and one damaged file must not stop the scan of every other folder.
        return _PlanRead(problem=f"{shown} is a damaged DICOM file ({type(exc).__name__}: {exc})")
    if not beams:
        return _PlanRead(
            problem=f"{shown} is an RTPLAN without beams (no IonBeamSequence or BeamSequence items)"
        )
    if not identity.beams:
        return _PlanRead(
            problem=f"{shown} has no treatment beams (only setup beams or beams without a number)"
        )
    return _PlanRead(identity=identity, sop_instance_uid=uid)


def _check_logs(walk: _Walk, checked: _Checked) -> list[str]:
    """The logs against the one plan (see :func:`cases.identity.log_problems`)."""
    assert checked.identity is not None
    paths = {file.rel: file.read_path for file in walk.files}
    plan_name = _shown(checked.rtplans[0])

    def head(rel: str) -> bytes:
        try:
            with open(paths[rel], "rb") as handle:
                return handle.read(HEADER_BYTES)
        except OSError:
            return b""  # reported by the walk already, or gone since: nothing to match

    return log_problems(checked.identity, plan_name, checked.logs, checked.plan_infos, head)


def _cut_short(dataset: pydicom.Dataset, file_size: int) -> str | None:
    """How a truncated file shows, or None.

    pydicom reads a file that ends early without complaint: the element at the cut keeps
    the bytes that are there and everything after it (later beams, say) is simply missing.
    A value shorter than its declared length gives the cut away; so does an element too
    long to be read (deferred: only its place is known) that would end past the file's end.
    Undefined-length sequences cut short make pydicom raise instead (an ``OSError``).
    """
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset reads every value)
        # keep_deferred: look at where a long element is without reading it
        element = dataset.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            continue
        if isinstance(element.value, bytes) and len(element.value) < element.length:
            return f"element {element.tag} holds {len(element.value)} of its {element.length} bytes"
        if element.value is None and element.value_tell + element.length > file_size:
            return f"element {element.tag} declares {element.length} bytes past the end of the file"
    return None


# --- small helpers --------------------------------------------------------------------------


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _base_name(rel: str) -> str:
    return rel.rsplit("/", 1)[-1]


def _matches(rel: str, pattern: str) -> bool:
    rel, pattern = rel.lower(), pattern.lower().strip("/")
    if "/" not in pattern:
        return fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    parts, pattern_parts = rel.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(
        fnmatchcase(part, wanted) for part, wanted in zip(parts, pattern_parts, strict=True)
    )


def _is_within(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _shown(name: str) -> str:
    """A file name fit for a message: undecodable bytes and control characters escaped."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
