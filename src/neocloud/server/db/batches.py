"""Long id lists cut into ``IN (...)`` lists of a bounded length.

Every query that selects rows by a list of ids the caller gathered (a pass's deployments,
a fleet's nodes, a bill's replicas) sends them :data:`IDS_PER_QUERY` at a time, so no
statement's bound parameters outgrow what the database takes: SQLite's
``SQLITE_MAX_VARIABLE_NUMBER`` is 32,766 since 3.32.0 (999 before), PostgreSQL's
protocol allows 65,535 per statement (https://www.sqlite.org/limits.html, section 9;
PostgreSQL's ``Bind`` message counts parameters in an Int16).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

IDS_PER_QUERY = 1000
"""Ids per ``IN (...)`` list: far below both limits above with a statement's other
parameters, and few statements for a fleet of thousands of nodes or deployments (the
statement counts pinned in ``tests/server/test_fleet_scale.py`` assume it)."""


def id_batches(ids: Sequence[T], size: int = IDS_PER_QUERY) -> Iterator[Sequence[T]]:
    """``ids`` in order, ``size`` at a time (the last batch shorter; none for no ids).

    Raises:
        ValueError: ``size`` is below 1.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    for i in range(0, len(ids), size):
        yield ids[i:i + size]
