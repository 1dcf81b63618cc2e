"""pg_durable for Python: durable execution of SQL workflows inside PostgreSQL."""

from __future__ import annotations

from pg_durable.errors import PgDurableError

__version__ = "0.1.0"

__all__ = ["PgDurableError", "__version__"]
