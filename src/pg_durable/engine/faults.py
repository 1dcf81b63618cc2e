"""Which database errors are the server's condition rather than a step's outcome.

A worker meets them when PostgreSQL restarts or fails over, when its connection is killed, or
when the server cannot write (a read-only standby after a failover, a full disk): nothing is
wrong with the work, only with where it is done. Such an error is never recorded as a step's
failure or an instance's internal error; the worker logs one line, backs off, reconnects and
finds everything as the database says it stands — the transaction that met the error rolled
back, so every step in it runs again later.
"""

from __future__ import annotations

from typing import Final

import psycopg

#: SQLSTATE classes: 08 connection exception, 53 insufficient resources (disk full, out of
#: memory, too many connections).
_CLASSES: Final = frozenset({"08", "53"})
#: admin_shutdown, crash_shutdown, cannot_connect_now, read_only_sql_transaction.
_STATES: Final = frozenset({"57P01", "57P02", "57P03", "25006"})


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the server cannot do the work right now, not that it failed."""
    if isinstance(exc, psycopg.OperationalError):  # (its own subclasses carry such states)
        return True
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
        return exc.sqlstate[:2] in _CLASSES or exc.sqlstate in _STATES
    return False
