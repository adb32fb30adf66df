"""The file transfer worker: ``upload_case`` and ``download_results``.

The transfer itself (temporary names, rename into place, size and SHA-256 verified on both
sides, resume of partial files, skip of verified ones) is :mod:`workers.transports.transfer`;
this module picks the folders for a step run and reports the outcome.  Re-running a
transfer for the same step run is cheap and safe, which is what lets the reconciler re-send
one that went silent.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path, PurePosixPath
from typing import Any

from cases import manifest as manifests
from cases.folder import folder_link_problem
from cases.models import Case, WorkflowStep
from cases.services import active_step_run, step_run_claim, step_run_heartbeat
from mqi_site.config import RunPaths, get_config
from mqi_site.messaging import CONDUCTOR, Command, ErrorKind, send
from workers.hosts import ensure_remote_dir, transport_for
from workers.transports import LocalTransport, TransportError
from workers.transports.transfer import (
    TransferReport,
    download_tree,
    prune_tree,
    remove_tree,
    upload_tree,
)

log = logging.getLogger(__name__)

# While files move, the step run's deadline is pushed ``conductor.dispatch_grace_sec``
# ahead, at most every HEARTBEAT_EVERY_SEC (and at least three times per grace period).
HEARTBEAT_EVERY_SEC = 10


def _heartbeat(step_run_id: int, grace_sec: float):
    last = time.monotonic()
    every = min(HEARTBEAT_EVERY_SEC, grace_sec / 3)

    def beat(report: TransferReport) -> None:
        nonlocal last
        if time.monotonic() - last >= every:
            last = time.monotonic()
            if not step_run_heartbeat(step_run_id=step_run_id, deadline_sec=grace_sec):
                raise TransferCancelled(f"step run {step_run_id} is no longer wanted")

    return beat


class TransferCancelled(Exception):
    """The step run was cancelled or superseded while its files were moving."""


class FolderChanged(Exception):
    """The case folder is no longer the folder that was checked: nothing of it may run."""


def handle(command: str, payload: dict[str, Any]) -> None:
    row = active_step_run(payload["step_run_id"], "case", "run")
    if row is None:
        return  # cancelled or superseded
    config = get_config()
    case = row.case
    outcome = {"case_id": case.case_id, "step_run_id": row.pk}
    grace_sec = config.conductor.dispatch_grace_sec
    if not step_run_claim(step_run_id=row.pk, deadline_sec=grace_sec):
        # A duplicate of the message while another worker moves these files: two copies
        # into the same temporary names would trip over each other.
        log.info("%s: already taken by another worker; this message is a duplicate", row.name)
        return
    transport = transport_for(row.host)
    paths = config.run_paths(case.case_id, row.run.number, row.host)
    beat = _heartbeat(row.pk, grace_sec)
    extra: dict[str, Any] = {}
    try:
        if command == Command.UPLOAD_CASE:
            report = _upload(transport, case, paths, beat)
            done = Command.CASE_UPLOAD_COMPLETED
        elif command == Command.DOWNLOAD_RESULTS:
            report = _download(transport, paths, beat)
            extra["files"] = [
                {"path": path, "size": size, "sha256": sha256}
                for path, size, sha256 in sorted(report.verified)
            ]
            done = Command.RESULTS_DOWNLOAD_COMPLETED
        else:
            raise ValueError(f"unknown file_transfer command {command!r}")
    except TransferCancelled:
        log.info("%s stopped: the step run was cancelled", row.name)
        return
    except FolderChanged as exc:
        _report_failure(row, outcome, ErrorKind.INVALID_INPUT, str(exc))
        return
    except TransportError as exc:
        kind = ErrorKind.PERMANENT if exc.permanent else ErrorKind.TRANSIENT
        if exc.unreachable:
            kind = ErrorKind.UNREACHABLE  # an outage: the step waits, resuming when it is back
        _report_failure(row, outcome, kind, str(exc))
        return
    step_run_heartbeat(step_run_id=row.pk, deadline_sec=grace_sec)
    log.info("%s: %s", row.name, _describe(report))
    send(CONDUCTOR, done, {**outcome, "stdout_tail": _describe(report), **extra})


def _report_failure(row: WorkflowStep, outcome: dict[str, Any], kind: str, message: str) -> None:
    log.warning("%s failed (%s): %s", row.name, kind, message)
    send(
        CONDUCTOR,
        Command.FILE_TRANSFER_FAILED,
        {**outcome, "error_kind": kind, "error_message": message},
    )


def _upload(transport, case: Case, paths: RunPaths, beat) -> TransferReport:
    """Upload exactly the files that were checked into the run's own folder.

    The folder is compared with the manifest taken when it was checked, before and after
    the copy (the copy's own hashes are the "after"): a folder changed since then fails
    the step instead of running unchecked files.  Whatever else the run's remote folder
    holds (an earlier delivery's leftovers) is removed, and the run's output folder is
    emptied: the commands see these files and nothing else.
    """
    source = Path(case.source_path)
    if not source.is_dir():
        raise TransportError(
            f"the case folder {source} is gone from the watch directory (moved or deleted "
            "after it was found); put it back and retry the case",
            permanent=True,
        )
    # Checked again here: the folder may have been swapped for a link since it was scanned.
    escape = folder_link_problem(source)
    if escape:
        raise TransportError(f"{source}: {escape}", permanent=True)
    expected = case.manifest
    try:
        listed = [{"path": rel, "size": size} for rel, size, _ in manifests.walk(source)]
    except manifests.ManifestError as exc:
        raise FolderChanged(_changed_message(str(exc))) from None
    _compare([{"path": e["path"], "size": e["size"]} for e in expected], listed)
    ensure_remote_dir(transport, str(PurePosixPath(paths.case_dir).parent))
    report = upload_tree(transport, source, paths.case_dir, on_progress=beat)
    sent = [{"path": rel, "size": size, "sha256": sha} for rel, size, sha in report.verified]
    _compare(expected, sent)
    keep = {entry["path"] for entry in expected}
    prune_tree(transport, paths.case_dir, keep)
    remove_tree(transport, paths.output_dir)
    return report


def _download(transport, paths: RunPaths, beat) -> TransferReport:
    """Download the run's output into the run's own results folder, and nothing else."""
    paths.results_dir.mkdir(parents=True, exist_ok=True)
    report = download_tree(transport, paths.output_dir, paths.results_dir, on_progress=beat)
    prune_tree(LocalTransport(), str(paths.results_dir), {rel for rel, _, _ in report.verified})
    return report


def _compare(expected: list[dict[str, Any]], found: list[dict[str, Any]]) -> None:
    before = {entry["path"]: entry for entry in expected}
    after = {entry["path"]: entry for entry in found}
    if before != after:
        difference = manifests.diff(
            [{"sha256": "", **entry} for entry in expected],
            [{"sha256": "", **entry} for entry in found],
        )
        raise FolderChanged(_changed_message(difference.describe()))


def _changed_message(what: str) -> str:
    return (
        f"the case folder changed after it was checked ({what}); nothing was run on it: "
        "re-run the case from the start to check the folder again"
    )


def _describe(report: TransferReport) -> str:
    return (
        f"{report.files} file(s), {report.bytes / 1e6:.1f} MB in {report.seconds:.2f} s "
        f"({report.megabytes_per_sec:.1f} MB/s sent; skipped {report.files_skipped} verified, "
        f"resumed {report.files_resumed})"
    )
