"""Worker actors: ``file_transfer`` and ``remote_executor``.

Thin callers: the work is done in :mod:`workers.transfer` and :mod:`workers.executor`.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from mqi_site.messaging import FILE_TRANSFER, QUEUES, REMOTE_EXECUTOR


@dramatiq.actor(actor_name=FILE_TRANSFER, queue_name=QUEUES[FILE_TRANSFER], max_retries=0)
def file_transfer(command: str, payload: dict[str, Any]) -> None:
    from workers import transfer

    transfer.handle(command, payload)


@dramatiq.actor(actor_name=REMOTE_EXECUTOR, queue_name=QUEUES[REMOTE_EXECUTOR], max_retries=0)
def remote_executor(command: str, payload: dict[str, Any]) -> None:
    from workers import executor

    executor.handle(command, payload)
