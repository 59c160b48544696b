"""What the control-plane app holds while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from neocloud.server.backends.base import Backend
from neocloud.server.db.engine import Database
from neocloud.server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    db: Database
    backends: dict[str, Backend]
    wake: Any = None
    """Callable that wakes the reconcilers after an API write."""
    extras: dict[str, Any] = field(default_factory=dict)

    def wake_reconcilers(self) -> None:
        if self.wake is not None:
            self.wake()

    def commit_and_wake(self, s: Session) -> None:
        """Commit what a route wrote, then wake the reconcilers to act on it (the state is
        in the database before anything acts on it)."""
        s.commit()
        self.wake_reconcilers()
