"""What a case's results were computed from, in the words the case page and CLI use.

Every run keeps the manifest it uploaded and the files it downloaded; this module puts
them side by side with the folder as it is now, so a physicist sees at a glance whether
the folder still holds what the current result was computed from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cases import manifest as manifests
from cases.folder import LogCheck
from cases.models import Case, CaseRun
from mqi_site.config import RunPaths, get_config

LOG_CHECK_SAID = {
    LogCheck.PASSED: "yes: every log names the plan's patient and a treatment beam, and "
    "every treatment beam has a log",
    LogCheck.FAILED: "no: see the failure",
    LogCheck.OFF: "not checked: scanner.check_log_identity is off in config.yaml",
    LogCheck.NOT_REACHED: "not checked: no readable plan to match the logs against",
}


def log_check_said(value: str) -> str:
    try:
        return LOG_CHECK_SAID[LogCheck(value)]
    except ValueError:
        return value


def run_paths(case: Case, run: CaseRun | None = None) -> RunPaths | None:
    """The folders of ``run`` (default: the case's current run), or None without one."""
    run = run or case.current_run
    if run is None:
        return None
    try:
        config = get_config()
        host = run.host or case.host or config.default_host
        return config.run_paths(case.case_id, run.number, host)
    except ValueError:  # a forged case id: no folder was ever made for it
        return None


@dataclass
class RunView:
    run: CaseRun
    current: bool
    manifest_digest: str
    files: int
    bytes: int
    result_files: list = field(default_factory=list)
    results_dir: Path | None = None


def case_runs(case: Case) -> list[RunView]:
    """Every run, newest first, with its manifest's summary and its result files."""
    views = []
    for run in case.runs.prefetch_related("result_files").order_by("-number"):
        paths = run_paths(case, run)
        views.append(
            RunView(
                run=run,
                current=run.pk == case.current_run_id,
                manifest_digest=manifests.digest(run.manifest)[:12] if run.manifest else "",
                files=len(run.manifest),
                bytes=manifests.total_bytes(run.manifest),
                result_files=list(run.result_files.all()),
                results_dir=paths.results_dir if paths else None,
            )
        )
    return views


@dataclass
class FolderNow:
    """The case folder now, against what the case last uploaded (or last checked)."""

    entries: list[dict]  # the manifest as last checked
    compared_with: str  # "run 2" or "the check when the case was found"
    changed: bool | None  # None: could not look
    said: str


def folder_state(case: Case) -> FolderNow:
    run = case.current_run
    if run is not None and run.uploaded_at is not None:
        reference, compared_with = run.manifest, f"run {run.number}"
    else:
        reference, compared_with = case.manifest, "the last check of the folder"
    entries = list(case.manifest)
    path = Path(case.source_path)
    if not path.is_dir():
        return FolderNow(
            entries, compared_with, None, "the folder is gone from the watch directory"
        )
    try:
        now = manifests.folder_manifest(path)
    except manifests.ManifestError as exc:
        return FolderNow(entries, compared_with, None, f"the folder cannot be read now: {exc}")
    difference = manifests.diff(reference, now)
    if difference:
        return FolderNow(
            entries,
            compared_with,
            True,
            f"the folder changed after {compared_with}: {difference.describe()}; "
            "re-run the case to compute from the folder as it is now",
        )
    return FolderNow(entries, compared_with, False, f"unchanged since {compared_with}")
