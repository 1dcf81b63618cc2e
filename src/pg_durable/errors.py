"""The pg_durable error hierarchy: one root, one subclass per condition a caller can act on."""

from __future__ import annotations


class PgDurableError(Exception):
    """Root of every error raised by pg_durable's Python side."""


class ConfigurationError(PgDurableError):
    """A setting, flag or environment variable has an invalid value."""


class EmbeddedServerError(PgDurableError):
    """The embedded PostgreSQL could not be found, initialised or started."""


class SchemaError(PgDurableError):
    """The df schema is missing, of an unknown version, or could not be installed."""


class GraphError(PgDurableError):
    """A workflow graph loaded from df.nodes is malformed (hand-built or tampered with)."""


class SubstitutionError(PgDurableError):
    """A `{var}` or `$name` reference could not be substituted into a step."""


class StepError(PgDurableError):
    """A step failed; the message is the text stored as the failed node's result."""


class ResultShapeChanged(StepError):
    """A statement's rows do not match its description: it changed shape (ALTER TABLE) between
    being described and being run, and runs again once described anew."""
