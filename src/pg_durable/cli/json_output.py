"""What ``--json`` writes for instances and nodes: their fields, times in ISO 8601."""

from __future__ import annotations

from datetime import datetime

from pg_durable.client.records import Instance, Node


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def instance_json(instance: Instance) -> dict[str, object]:
    """An instance as ``ls``, ``show`` and ``wait`` write it."""
    return {
        "id": instance.id,
        "label": instance.label,
        "status": instance.status,
        "execution_count": instance.execution_count,
        "output": instance.output,
        "created_at": _time(instance.created_at),
        "completed_at": _time(instance.completed_at),
    }


def node_json(node: Node) -> dict[str, object]:
    """A node as ``show`` writes it."""
    return {
        "id": node.id,
        "node_type": node.node_type,
        "query": node.query,
        "result_name": node.result_name,
        "left": node.left,
        "right": node.right,
        "status": node.status,
        "inferred_status": node.inferred_status,
        "result": node.result,
        "status_details": node.status_details,
        "updated_at": _time(node.updated_at),
        "execution_id": node.execution_id,
    }
