"""Replica engines other than the built-in serving runtime (each in its own environment)."""
