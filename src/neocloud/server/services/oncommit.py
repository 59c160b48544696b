"""Side effects outside the database that must wait for the transaction's commit.

Invariant: a file-system change that a row's deletion implies (a volume's files, a job's
logs and working directories) happens only once that deletion is committed. Done
before the commit, a commit that then failed (a full database disk answers 507, a
conflict 409) left the row in place with its files gone: the caller was told nothing had
changed while the data was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


def after_commit(s: Session, action: Callable[[], None], *, what: str) -> None:
    """Run ``action`` once the session's current transaction commits (never when it rolls
    back). A failure of ``action`` is logged, not raised: the commit stands."""

    def run(_session: Session) -> None:
        try:
            action()
        except Exception:
            log.exception("after the commit: %s failed", what)

    event.listen(s, "after_commit", run, once=True)
