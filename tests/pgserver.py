"""
The ``postgres`` and ``pg_dsn`` fixtures: a throwaway PostgreSQL server
(:class:`vmqtw.testing.pgserver.PostgresServer`) for the tests of the
``postgresql`` message store, removed at the end of the run, even on
failure.

Without PostgreSQL installed these tests fail, saying how to install it --
they are not skipped (CI installs it; see .ci/run).  Each test gets its own
schema (``pg_dsn``), so tests never see each other's rows.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from vmqtw.testing.pgserver import INSTALL_HINT, PostgresServer, postgres_bindir

__all__ = ["INSTALL_HINT", "PostgresServer", "postgres_bindir", "postgres", "pg_dsn"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The run's PostgreSQL server (one per pytest worker)."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> str:
    """A DSN whose tables live in a schema of this test's own."""
    return postgres.dsn(schema=postgres.new_schema())
