"""``python -m pg_durable``: the same as the ``pg-durable`` command."""

from __future__ import annotations

from pg_durable.cli.main import main

raise SystemExit(main())
