"""A worker thread's database connection across a database restart.

Django keeps a worker thread's connection from one message to the next (``CONN_MAX_AGE``)
and, with ``CONN_HEALTH_CHECKS``, checks it once per message: django_dramatiq's
``DbConnectionsMiddleware`` calls ``close_old_connections()`` before each message, and the
first query after that makes sure the connection still works, reconnecting if the server
went away.  A worker that goes back to the database after slow I/O (SFTP, SSH) within one
message asks for that check again, so a restart during the I/O costs a reconnect instead of
the message.
"""

from django.db import close_old_connections, transaction


def recheck_connection() -> None:
    """Have Django check the connection before its next query.

    Not inside a transaction: its connection must stay the one it began on (a restart
    fails the transaction, as it should)."""
    if transaction.get_autocommit():
        close_old_connections()
