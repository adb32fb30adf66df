"""How workers reach a GPU server: run commands and move files, over SSH or on this machine.

- :mod:`.base` — the contract (``Transport``), ``SSHTarget``, ``TransportError``
- :mod:`.ssh` / :mod:`.local` — the two transports
- :mod:`.transfer` — verified, resumable, atomic folder upload/download on any transport
- :mod:`.detached` — long commands that survive the connection, polled and killable
"""

from workers.transports.base import (
    CommandResult,
    SSHTarget,
    Transport,
    TransportError,
)
from workers.transports.local import LocalTransport
from workers.transports.ssh import SSHTransport, close_thread_connections
from workers.transports.transfer import TransferReport, download_tree, upload_tree

__all__ = [
    "CommandResult",
    "LocalTransport",
    "SSHTarget",
    "SSHTransport",
    "TransferReport",
    "Transport",
    "TransportError",
    "close_thread_connections",
    "download_tree",
    "upload_tree",
]
