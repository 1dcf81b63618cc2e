"""The web dashboard of ``pg-durable ui``: instances, their graphs, the worker fleet.

Standard library only (``http.server`` in threads) plus psycopg; its HTML, CSS and script are
package data (``templates/``, ``static/``), nothing from elsewhere. It reads through the df SQL
API as the role of the DSN it is given, so row-level security applies; it binds to 127.0.0.1 by
default and is read-only unless started with actions allowed (docs/ui.md).
"""

from __future__ import annotations

from pg_durable.ui.app import Dashboard, Options, Request, Response
from pg_durable.ui.database import Database, Viewer, viewer
from pg_durable.ui.server import DashboardServer, make_server

__all__ = [
    "Dashboard",
    "DashboardServer",
    "Database",
    "Options",
    "Request",
    "Response",
    "Viewer",
    "make_server",
    "viewer",
]
