"""Reconcilers: one loop per resource kind, driven by the database, safe to restart,
on one shared core (:mod:`neocloud.server.reconcilers.core`; see ``README.md`` here for
the invariants it keeps)."""
