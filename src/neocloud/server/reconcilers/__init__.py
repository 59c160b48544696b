"""Reconcilers: one loop per resource kind, driven by the database, safe to restart."""
