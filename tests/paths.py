"""Where a case's runs live on the stand-in GPU server and in the results (see
``mqi_site.config.Config.run_paths``): ``<root>/<case id>/run-<n>``."""

from __future__ import annotations

from pathlib import Path


def run_dirs(root: Path, case_id: str) -> list[Path]:
    """Every run folder of the case under ``root``, oldest first."""
    folder = root / case_id
    found = folder.glob("run-*") if folder.is_dir() else []
    return sorted(found, key=lambda path: int(path.name.removeprefix("run-")))


def last_run_dir(root: Path, case_id: str) -> Path:
    """The newest run's folder (``<root>/<case id>/run-1`` when there is none yet)."""
    runs = run_dirs(root, case_id)
    return runs[-1] if runs else root / case_id / "run-1"


def starts(upload_dir: Path, case_id: str, program: str) -> int:
    """How often a stand-in started for the case, over all its runs (``.mqi_starts``)."""
    total = 0
    for run in run_dirs(upload_dir, case_id):
        marker = run / ".mqi_starts" / program
        if marker.exists():
            total += len(marker.read_text().splitlines())
    return total
