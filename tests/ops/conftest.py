"""The ops store on both databases it supports: every test taking `ops_url` runs once on a SQLite
file and once on a fresh database of a real PostgreSQL server (one server per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.postgres import new_database, postgres_server


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def ops_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ops.sqlite'}"
    return new_database(request.getfixturevalue("postgres_admin"))
