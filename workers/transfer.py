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
from pathlib import Path
from typing import Any

from cases.models import WorkflowStep
from cases.services import step_run_claim, step_run_heartbeat
from mqi_site.config import get_config
from mqi_site.messaging import CONDUCTOR, Command, ErrorKind, send
from workers.hosts import ensure_remote_dir, transport_for
from workers.scanner.folder import folder_link_problem
from workers.transports import TransportError
from workers.transports.transfer import TransferReport, download_tree, upload_tree

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


def handle(command: str, payload: dict[str, Any]) -> None:
    row = (
        WorkflowStep.objects.select_related("case")
        .filter(pk=payload["step_run_id"], status__in=WorkflowStep.ACTIVE)
        .first()
    )
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
    beat = _heartbeat(row.pk, grace_sec)
    try:
        if command == Command.UPLOAD_CASE:
            source = Path(case.source_path)
            report = _upload(transport, source, config.remote_case_dir(case.case_id), beat)
            done = Command.CASE_UPLOAD_COMPLETED
        elif command == Command.DOWNLOAD_RESULTS:
            local = config.local_results_dir(case.case_id)
            local.mkdir(parents=True, exist_ok=True)
            remote = config.remote_output_dir(case.case_id)
            report = download_tree(transport, remote, local, on_progress=beat)
            done = Command.RESULTS_DOWNLOAD_COMPLETED
        else:
            raise ValueError(f"unknown file_transfer command {command!r}")
    except TransferCancelled:
        log.info("%s stopped: the step run was cancelled", row.name)
        return
    except TransportError as exc:
        kind = ErrorKind.PERMANENT if exc.permanent else ErrorKind.TRANSIENT
        log.warning("%s failed (%s): %s", row.name, kind, exc)
        send(
            CONDUCTOR,
            Command.FILE_TRANSFER_FAILED,
            {**outcome, "error_kind": kind, "error_message": str(exc)},
        )
        return
    step_run_heartbeat(step_run_id=row.pk, deadline_sec=grace_sec)
    log.info("%s: %s", row.name, _describe(report))
    send(CONDUCTOR, done, {**outcome, "stdout_tail": _describe(report)})


def _upload(transport, source: Path, remote_dir: str, beat) -> TransferReport:
    if not source.is_dir():
        raise TransportError(
            f"the case folder {source} is gone from the watch directory (moved or deleted "
            "after it was found); put it back and retry the case",
            permanent=True,
        )
    # Checked again here: the folder may have been swapped for a link since it was scanned,
    # and a retry from the start uploads without scanning.
    escape = folder_link_problem(source)
    if escape:
        raise TransportError(f"{source}: {escape}", permanent=True)
    ensure_remote_dir(transport, str(Path(remote_dir).parent))
    return upload_tree(transport, source, remote_dir, on_progress=beat)


def _describe(report: TransferReport) -> str:
    return (
        f"{report.files} file(s), {report.bytes / 1e6:.1f} MB in {report.seconds:.2f} s "
        f"({report.megabytes_per_sec:.1f} MB/s sent; skipped {report.files_skipped} verified, "
        f"resumed {report.files_resumed})"
    )
