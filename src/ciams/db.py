"""Database plumbing shared by every domain: the declarative base, engines, migrations.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` so that a
committed index row survives a power cut, the property C-STORE acknowledgement relies
on. PostgreSQL is reached through the same models with a ``postgresql+psycopg://`` URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base for every domain's models (one metadata, one migration chain)."""

    metadata = MetaData(naming_convention=NAMING)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, synchronous: str = "FULL") -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # DICOM matching is case-sensitive except for person names (lower()-ed by the query).
    cur.execute("PRAGMA case_sensitive_like=ON")
    cur.close()


def _driver_autocommit(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None


def _begin_immediate(conn: Any) -> None:
    # Straight to the driver: this runs for every index commit, and a statement through
    # SQLAlchemy's execution machinery costs more than the BEGIN itself.
    conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")


def make_engine(
    url: str, *, sqlite_synchronous: str = "FULL", sqlite_immediate: bool = False
) -> Engine:
    """Create an engine; SQLite gets WAL and durability pragmas.

    ``sqlite_synchronous="NORMAL"`` is only for a caller that makes commits durable
    itself (the archive flushes the filesystem with syncfs before acknowledging).
    ``sqlite_immediate`` starts every transaction with ``BEGIN IMMEDIATE``: a writer
    that reads before it writes then waits for the lock up front instead of failing
    when another process committed in between (several DICOM worker processes).
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(
            engine,
            "connect",
            lambda conn, rec: _sqlite_pragmas(conn, rec, synchronous=sqlite_synchronous),
        )
        if sqlite_immediate:
            # pysqlite's own BEGIN is deferred; take over transaction control.
            event.listen(engine, "connect", _driver_autocommit)
            event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, None for other databases or in-memory."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the migrations shipped in the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def new_revision(message: str) -> None:
    """Autogenerate a migration from the models (developer tool; needs an empty SQLite)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/gen.db"
        cfg = alembic_config(url)
        cfg.attributes["autogenerate"] = True
        engine = make_engine(url)
        upgrade(engine)
        command.revision(cfg, message=message, autogenerate=True)
