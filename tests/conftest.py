"""Shared fixtures: settings on a temporary data folder, on SQLite or PostgreSQL.

``CIAMS_TEST_DB=postgresql`` runs every test against a PostgreSQL cluster that the
session starts on loopback (one fresh database per test, cloned from a migrated
template); the default is the embedded SQLite.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ciams import db
from ciams.archive import Archive
from ciams.config import Settings, load_settings

TEST_DB = os.environ.get("CIAMS_TEST_DB", "sqlite")


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str | None]:
    if TEST_DB != "postgresql":
        yield None
        return
    from tests.pg import PostgresCluster

    cluster = PostgresCluster()
    url = cluster.start()
    with psycopg.connect(_plain(url) + "/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE ciams_template")
    engine = db.make_engine(url + "/ciams_template")
    db.upgrade(engine)
    engine.dispose()
    yield url
    cluster.stop()


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def fresh_database(pg_base_url: str | None) -> Iterator[str]:
    """A new migrated database on the session's PostgreSQL ('' = use SQLite)."""
    if pg_base_url is None:
        yield ""
        return
    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(_plain(pg_base_url) + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE ciams_template")
    yield f"{pg_base_url}/{name}"
    with psycopg.connect(_plain(pg_base_url) + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def wait_until(predicate: Callable[[], bool], seconds: float = 30) -> bool:
    """Poll until predicate() holds or the time is up; returns whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@contextmanager
def running_server(data_dir: Path, pg_base_url: str | None, **overrides: Any) -> Iterator[Any]:
    """A started server on its own database, for module-scoped fixtures."""
    from ciams.server import Server

    with fresh_database(pg_base_url) as url:
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "database_url": url,
            "dicom": {"port": 0},
            "http": {"port": 0},
            **overrides,
        }
        server = Server(load_settings(**values))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def database_url(pg_base_url: str | None) -> Iterator[str]:
    with fresh_database(pg_base_url) as url:
        yield url


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    """Settings factory: a temp data folder, the session's database, ephemeral ports."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "dicom": {"port": 0},
            "http": {"port": 0},
            "tasks": {"series_settle_seconds": 1.0},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return load_settings(**values)

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    arc = Archive(settings)
    yield arc
    arc.close()


@pytest.fixture
def make_server(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    """Start a full CIAMS server (DICOM + HTTP + tasks) on loopback ephemeral ports."""
    from ciams.server import Server

    started: list[Server] = []

    def factory(**overrides: Any) -> Server:
        from ciams.access import Accounts

        server = Server(make_settings(**overrides))
        server.start()
        started.append(server)
        # An administrator's token, for tests of the archive itself (the access tests
        # make their own users of every role).
        accounts = Accounts(server.archive.sessions)
        accounts.add_user("test-admin", "admin")
        token = accounts.issue_token("test-admin")
        server.token = token  # type: ignore[attr-defined]
        server.auth = {"Authorization": f"Bearer {token}"}  # type: ignore[attr-defined]
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., Any]) -> Any:
    return make_server()
