"""What the client raises when an instance cannot be found, waited for or signalled.

Errors of the database itself (a refused graph, a lost connection) are psycopg's, raised as
they come; the message of a refused graph is the DSL's.
"""

from __future__ import annotations

from pg_durable.errors import PgDurableError

__all__ = [
    "InstanceFinished",
    "InstanceNotCommitted",
    "InstanceNotFound",
    "InvalidInstanceId",
    "SnapshotFrozen",
    "WaitTimeout",
]


class InvalidInstanceId(PgDurableError, ValueError):
    """The text given as an instance id is not one (8 hexadecimal characters)."""


class InstanceNotFound(PgDurableError, LookupError):
    """No instance has this id, or the role connected cannot see it (row-level security)."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(
            f"instance {instance_id} not found (no such id, or another role's instance)"
        )
        self.instance_id = instance_id


class InstanceFinished(PgDurableError):
    """The instance has finished, so it can no longer receive signals."""

    def __init__(self, instance_id: str, status: str) -> None:
        super().__init__(
            f"instance {instance_id} is {status}: signals can only be sent to a pending or "
            "running instance"
        )
        self.instance_id = instance_id
        self.status = status


class InstanceNotCommitted(PgDurableError):
    """The instance was started in the transaction that waits for it: no worker sees it
    before that transaction commits."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(
            f"instance {instance_id} was started in this transaction, which has not "
            "committed: no worker can see it yet; commit, then wait"
        )
        self.instance_id = instance_id


class SnapshotFrozen(PgDurableError):
    """The connection waits in a REPEATABLE READ or SERIALIZABLE transaction, whose snapshot
    never shows what workers commit."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(
            f"cannot wait for instance {instance_id} in this REPEATABLE READ (or SERIALIZABLE) "
            "transaction: its snapshot never shows the workers' progress; wait on an autocommit "
            "connection, or in READ COMMITTED"
        )
        self.instance_id = instance_id


class WaitTimeout(PgDurableError, TimeoutError):
    """The instance had not finished when the wait's timeout ran out."""

    def __init__(self, instance_id: str, status: str, timeout: float) -> None:
        super().__init__(
            f"instance {instance_id} is still {status} after {timeout:g} s; "
            "is a worker running? (pg-durable worker)"
        )
        self.instance_id = instance_id
        self.status = status
        self.timeout = timeout
