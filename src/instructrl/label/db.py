"""Engine and transactions. SQLite (the default) runs in WAL mode so labelers read while one
writes; PostgreSQL is used when the URL says so (psycopg2).

Every write goes through `write(db)`: one transaction, committed whole or rolled back whole.
On SQLite it starts with BEGIN IMMEDIATE, which takes the write lock up front: a deferred
transaction that reads and then writes can fail with "database is locked" when another writer
committed in between, instead of waiting its turn (https://sqlite.org/lang_transaction.html).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session

from instructrl.errors import InputError
from instructrl.label.models import Base

DEFAULT_URL = "sqlite:///labels.db"
_IMMEDIATE = "instructrl_begin_immediate"


def normalize_url(url: str) -> URL:
    """sqlite:///PATH or postgresql://...; a bare postgresql:// means psycopg2 (SQLAlchemy 2.1
    would otherwise pick psycopg 3, which the project does not install)."""
    try:
        u = make_url(url)
    except Exception:
        raise InputError(f"not a database URL: {url!r}", field="--db") from None
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise InputError(f"unsupported database {u.get_backend_name()!r}: use sqlite:///PATH "
                         "or postgresql://USER@HOST:PORT/DB", field="--db")
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg2")
    return u


def make_engine(url: str = DEFAULT_URL) -> Engine:
    """An engine for `url`, with the schema created if missing."""
    url = normalize_url(url)
    if url.get_backend_name() == "sqlite":
        # timeout: how long a writer waits for the lock (sqlite3's busy handler).
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_setup(engine)
    else:
        engine = create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    return engine


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        # Let SQLAlchemy, not the sqlite3 module, emit BEGIN (SQLAlchemy's documented recipe
        # for pysqlite transactions), so that writes can say BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe in WAL mode; loses no committed data on app crash
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Session]:
    """A session for reading; closing it rolls back whatever it changed (never committed).
    Objects read stay usable, detached, after the block."""
    with Session(engine, expire_on_commit=False) as s:
        yield s


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Session]:
    """One transaction: commit if the block returns, roll back if it raises."""
    bind = engine.execution_options(**{_IMMEDIATE: True}) if engine.dialect.name == "sqlite" \
        else engine
    with Session(bind, expire_on_commit=False) as s:
        with s.begin():
            yield s
