from __future__ import annotations

import psycopg

from pg_durable import schema


def test_install_is_idempotent(dsn: str) -> None:
    assert "already installed" in schema.install(dsn)
    with psycopg.connect(dsn) as conn:
        assert schema.installed_version(conn) == schema.SCHEMA_VERSION
