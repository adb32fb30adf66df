"""One scan of the watched directory: report every complete, not yet known case folder.

Known case ids come from the database, so a folder is reported once across restarts and
repeated file events; the conductor's ``get_or_create`` absorbs the rare duplicate
message (two scans racing before the first registration commits).
"""

from __future__ import annotations

import hashlib
import logging
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from cases.folder import FolderState, check_case_folder, folder_facts, iter_candidate_folders
from cases.models import Case
from mqi_site.config import Config
from mqi_site.messaging import CONDUCTOR, Command, send

log = logging.getLogger(__name__)

CASE_ID_MAX = 200  # characters; Case.case_id holds 255


@dataclass
class ScanResult:
    reported: list[str] = field(default_factory=list)  # every new case sent, valid or not
    invalid: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    seconds: float = 0.0


def case_id_for(folder_name: str) -> str:
    """The case id for a folder: its name, shortened with a hash suffix when very long.

    Folder names are bytes; one that is not valid UTF-8 is escaped (``caf\\xe9``) and gets
    the hash suffix too, so it can neither be stored unescaped nor take the id of a folder
    literally named like its escaped form.  A valid name is taken in Unicode's composed
    form (NFC): ``café`` typed on one system and decomposed by another (NFD, as macOS
    writes it) is one case, not two.
    """
    raw = folder_name.encode("utf-8", "surrogateescape")
    shown = _storable(folder_name)
    if shown == folder_name:
        shown = folder_name = unicodedata.normalize("NFC", folder_name)
    if len(folder_name) <= CASE_ID_MAX and shown == folder_name:
        return folder_name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return f"{shown[: CASE_ID_MAX - 14]}~{digest}"


def _storable(text: str) -> str:
    # A name that is not valid UTF-8 carries surrogates, which no database column accepts.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan_cases(config: Config, folders: list[str] | None = None) -> ScanResult:
    """Scan every folder (or just ``folders``) and send ``new_case_found`` for new ones."""
    started = time.perf_counter()
    scanner = config.scanner
    watch_dir = Path(scanner.watch_dir)
    result = ScanResult()
    if not watch_dir.is_dir():
        log.warning("scanner: watch directory %s does not exist", watch_dir)
        return result
    known = set(Case.objects.values_list("case_id", flat=True))
    if folders is None:
        candidates = iter_candidate_folders(watch_dir, skip=known)
    else:
        names = {name for name in folders if name not in (".", "..") and "/" not in name}
        candidates = (watch_dir / name for name in sorted(names) if (watch_dir / name).is_dir())
    now = time.time()
    for path in candidates:
        case_id = case_id_for(path.name)
        if case_id in known:
            continue
        check = check_case_folder(path, scanner, now=now)
        verdict = check.verdict
        if verdict.state == FolderState.INCOMPLETE:
            result.incomplete.append(case_id)
            continue
        problems = list(verdict.reasons) if verdict.state == FolderState.READY_INVALID else []
        send(
            CONDUCTOR,
            Command.NEW_CASE_FOUND,
            {
                "case_id": case_id,
                "source_path": _storable(str(path)),
                "workflow": scanner.workflow,
                "problems": problems,
                **folder_facts(check),
            },
        )
        result.reported.append(case_id)
        if problems:
            result.invalid.append(case_id)
    result.seconds = time.perf_counter() - started
    if result.reported:
        log.info(
            "scanner: reported %d case(s) (%d invalid) in %.3f s",
            len(result.reported),
            len(result.invalid),
            result.seconds,
        )
    return result
