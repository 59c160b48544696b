"""What the usage records bill for a deployment's gateway requests (usage ledger tests)."""

from __future__ import annotations

from sqlalchemy import func, select

from neocloud.server.db.engine import Database
from neocloud.server.db.tables import UsageRecord


def billed_tokens(db: Database, deployment_id: str) -> tuple[int, int, int, int]:
    """``(prompt tokens, completion tokens, requests served, requests failed)`` of the
    ``tokens`` usage records of ``deployment_id``."""
    with db.session() as s:
        row = s.execute(select(
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
            func.coalesce(func.sum(UsageRecord.requests), 0),
            func.coalesce(func.sum(UsageRecord.failed_requests), 0))
            .where(UsageRecord.kind == "tokens", UsageRecord.object_id == deployment_id)
        ).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])
