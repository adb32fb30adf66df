"""Dry runs that decide exactly as the real thing: run it, then roll it back.

Everything the conductor does is written in one database transaction and its messages
are sent only after commit (``send_on_commit``), so running the real code inside a
transaction that is then rolled back shows what it would do and leaves no trace: the
rows return to what they were, and the messages (and mails) are never sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import transaction


@contextmanager
def rolled_back() -> Iterator[None]:
    """Run the block in a transaction that is rolled back at its end, whatever it did."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)
