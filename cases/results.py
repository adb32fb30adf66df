"""A run's result files on this machine: found safely, recognised as doses, drawn and cached.

Result paths come from a listing of the GPU server's output folder (``ResultFile.path``),
and the planning system's dose from the case folder's manifest: text from outside.  A
file is read only where its real path (links resolved) lies inside its own folder, so
neither ``..`` nor a symbolic link in the results can hand out another file the web
server could read.  The file is then opened without following a link, so one swapped in
after the check is refused rather than followed.

Pictures (:mod:`evaluation.picture`) are drawn on the server the first time they are
asked for and kept in the ``pictures`` cache (settings: a file cache of bounded size),
keyed by :func:`evaluation.picture.cache_key`, which changes whenever the file does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.core.cache import caches

from cases import provenance
from cases.models import Case, CaseRun, ResultFile
from evaluation.dose import DoseFileError, DoseSummary, is_rt_dose, read_dose, summarize_dose
from evaluation.picture import cache_key, dose_picture, dose_thumbnail

PICTURE_CACHE = "pictures"


class ResultFileError(Exception):
    """A result file that cannot be handed out; the message says why."""


def confined_path(root: Path, relative: str) -> Path:
    """``root/relative`` if it is a regular file whose real path lies inside ``root``."""
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or any(part in (".", "..") for part in parts):
        raise ResultFileError(f"{relative!r} is not a path inside {root}")
    real_root = os.path.realpath(root)
    real = os.path.realpath(root.joinpath(*parts))
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise ResultFileError(f"{relative} leads out of {root} (a symbolic link); not read")
    if not os.path.isfile(real):
        raise ResultFileError(f"{relative} is not in {root} any more")
    return Path(real)


def open_confined(path: Path):
    """Open a file found by :func:`confined_path` for reading, refusing a link swapped in."""
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError as exc:
        raise ResultFileError(f"{path.name} cannot be opened: {exc.strerror}") from None


def result_path(case: Case, result_file: ResultFile) -> Path:
    """Where a result file of ``case`` is, inside its run's results folder."""
    paths = provenance.run_paths(case, result_file.run)
    if paths is None:
        raise ResultFileError(f"case {case.case_id} has no results folder")
    return confined_path(paths.results_dir, result_file.path)


def dose_result_files(
    case: Case, run: CaseRun, *, skip_unreadable: bool = True
) -> list[tuple[ResultFile, Path]]:
    """The run's result files that are RT Doses, with where each is.  A file that cannot be
    read is left out, or with ``skip_unreadable=False`` raises (``ResultFileError``,
    ``DoseFileError``)."""
    doses = []
    for result_file in run.result_files.all():
        if not result_file.path.lower().endswith(".dcm"):
            continue
        try:
            path = result_path(case, result_file)
            if is_rt_dose(path):
                doses.append((result_file, path))
        except (ResultFileError, DoseFileError):
            if not skip_unreadable:
                raise
    return doses


@dataclass(frozen=True)
class DoseView:
    """A dose of the case page: the file, and its summary or why it cannot be shown."""

    file: ResultFile
    summary: DoseSummary | None
    problem: str = ""


def dose_views(case: Case, run: CaseRun | None) -> list[DoseView]:
    if run is None:
        return []
    views = []
    for result_file, _ in dose_result_files(case, run):
        try:
            views.append(DoseView(result_file, dose_summary(case, result_file)))
        except (ResultFileError, DoseFileError) as exc:
            views.append(DoseView(result_file, None, str(exc)))
    return views


def dose_summary(case: Case, result_file: ResultFile) -> DoseSummary:
    return _cached(case, result_file, "dose summary", summarize_dose)


def dose_png(case: Case, result_file: ResultFile, *, thumbnail: bool = False) -> bytes:
    """The dose's three slices through its maximum (or, ``thumbnail``, the axial one)."""
    if thumbnail:
        return _cached(case, result_file, "dose thumbnail", dose_thumbnail)
    return _cached(
        case,
        result_file,
        "dose picture",
        lambda grid: dose_picture(grid, title=f"{case.case_id}: {result_file.path}"),
    )


def _cached(case: Case, result_file: ResultFile, variant: str, draw):
    path = result_path(case, result_file)
    key = cache_key([path], variant=variant)
    cache = caches[PICTURE_CACHE]
    value = cache.get(key)
    if value is None:
        value = draw(read_dose(path))
        cache.set(key, value, timeout=None)
    return value
