"""Backends: where workload processes really run (``local``, ``fake``; ``ray`` later)."""

from __future__ import annotations

from neocloud.server.backends.base import Backend, WorkloadSpec, WorkloadState
from neocloud.server.backends.fake import FakeBackend
from neocloud.server.backends.local import LocalBackend

__all__ = ["Backend", "FakeBackend", "LocalBackend", "WorkloadSpec", "WorkloadState"]
