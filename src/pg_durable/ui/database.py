"""The dashboard's connections: all of them to the DSN it was given, as that DSN's role.

The dashboard never connects as anyone else, and reads only through the df SQL API (through
:mod:`pg_durable.client`), so row-level security shows it exactly what the viewer's role may
see. A page reads in one read-only REPEATABLE READ transaction (:meth:`Database.snapshot`):
its header, graph and tree agree with each other, and a page can change nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from pg_durable.queries import query

Conn = psycopg.Connection[Any]

#: Connections kept open between requests (a browser polls every few seconds).
MAX_IDLE = 4


@dataclass(frozen=True, slots=True)
class Viewer:
    """The role the dashboard reads as."""

    role: str
    #: A superuser or a BYPASSRLS role: row-level security does not apply to it.
    sees_all: bool
    #: Whether the database has the df schema.
    installed: bool


def viewer(conn: Conn) -> Viewer:
    """Who ``conn`` reads as."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("ui_viewer")).fetchone()
    assert row is not None
    return Viewer(role=row["role"], sees_all=bool(row["sees_all"]), installed=row["installed"])


class Database:
    """A few autocommit connections to ``dsn``, reused across requests (threads)."""

    def __init__(self, dsn: str, *, application_name: str = "pg-durable ui") -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._closed = False

    def _take(self) -> Conn:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return psycopg.connect(self._dsn, autocommit=True, application_name=self._application_name)

    def _give_back(self, conn: Conn) -> None:
        reusable = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if reusable and not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """An autocommit connection as the viewer's role (for the actions: df.signal and
        df.cancel commit at once)."""
        conn = self._take()
        try:
            yield conn
        except psycopg.OperationalError:
            # The server went away, or this connection did: never reuse it, nor the idle ones
            # (after a restart of the server they are all gone).
            conn.close()
            self._drop_idle()
            raise
        finally:
            if not conn.closed:
                self._give_back(conn)

    @contextmanager
    def snapshot(self) -> Iterator[Conn]:
        """A connection in a read-only REPEATABLE READ transaction, rolled back on exit."""
        with self.connection() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            try:
                with conn.transaction(force_rollback=True):
                    yield conn
            finally:
                if not conn.closed:
                    conn.isolation_level = None
                    conn.read_only = None

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def close(self) -> None:
        """Close the idle connections; those in use close when they are given back."""
        with self._lock:
            self._closed = True
        self._drop_idle()
