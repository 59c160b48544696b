"""Database: tables, engine and sessions, Alembic migrations."""
