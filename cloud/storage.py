"""The directory's database: SQLite in one file by default, PostgreSQL (psycopg 3) by URL.

`open_engine(url)` returns an engine tuned for several API processes on one database;
`migrate(engine)` brings the schema to the newest Alembic revision (idempotent, safe when several
processes start at once). `write_txn(engine)` opens a transaction that takes the write lock at
once on SQLite (BEGIN IMMEDIATE), so two writers never deadlock upgrading a read lock; SQLite
writers of every process first queue on `<db>-writer.lock` (flock), so they wake as soon as the
previous writer commits instead of polling in SQLite's busy handler. SQLite commits are synced
(`synchronous=FULL`, see `sqlite_sync`).
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, text

DEFAULT_DB = "sqlite:////var/lib/tenantprint-cloud/cloud.db"
_MIGRATIONS = Path(__file__).parent / "migrations"
HEAD = "0005"


class StorageError(Exception):
    """The database is unusable (bad URL, unreachable, wrong schema)."""


def db_url(explicit: str | None = None) -> str:
    url = explicit or os.environ.get("TP_CLOUD_DB") or DEFAULT_DB
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not (url.startswith("sqlite:///") or url.startswith("postgresql+psycopg://")):
        raise StorageError("database URL must be sqlite:///<file> or postgresql://...")
    return url


def redacted(url: str) -> str:
    """The URL with any password removed (for messages)."""
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)


def open_engine(url: str | None = None, *, pool_size: int = 5) -> Engine:
    url = db_url(url)
    if url.startswith("sqlite"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=pool_size, max_overflow=10)
        _tune_sqlite(engine)
    else:
        engine = create_engine(url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True)
    return engine


def upsert(dialect: str, table):
    """`INSERT` with `ON CONFLICT` for `table` in the engine's dialect (SQLite or PostgreSQL): one
    statement, atomic across API processes, no savepoint round trip."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def sqlite_sync() -> str:
    """SQLite's `synchronous` setting: FULL (default) syncs the WAL at every commit, so a granted
    lookup's audit record is on disk before its answer leaves, even across a power cut. NORMAL
    (`TP_CLOUD_SQLITE_SYNC=normal`) survives process crashes but may lose the last commits to a
    power cut or kernel crash: only for deployments that accept that."""
    value = os.environ.get("TP_CLOUD_SQLITE_SYNC", "full").upper()
    if value not in ("FULL", "NORMAL"):
        raise StorageError("TP_CLOUD_SQLITE_SYNC must be full or normal")
    return value


def _tune_sqlite(engine: Engine) -> None:
    sync = sqlite_sync()

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        if _file_of(engine):
            os.chmod(_file_of(engine), 0o600)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("tp_write") else "BEGIN")


def _file_of(engine: Engine) -> str | None:
    db = engine.url.database
    return db if db and db != ":memory:" and os.path.exists(db) else None


_SQLITE_WRITER = threading.Lock()
_WRITER_FILES: dict[tuple[int, str], int] = {}  # (pid, db): a forked child opens its own


def _writer_file(engine: Engine) -> int | None:
    """An fd of `<db>-writer.lock`, this process's handle on the cross-process writer lock."""
    db = engine.url.database
    if not db or db == ":memory:":
        return None
    key = (os.getpid(), db)
    fd = _WRITER_FILES.get(key)
    if fd is None:
        fd = _WRITER_FILES[key] = os.open(db + "-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return fd


@contextmanager
def _sqlite_writer(engine: Engine) -> Iterator[None]:
    # SQLite has one writer at a time. Writers queue on a lock instead of in SQLite's busy handler,
    # whose sleep back-off (1, 2, 5, ... up to 100 ms) made the latency tail: threads of a process
    # on a mutex, processes (API workers, the admin CLI) on flock(2), which wakes the next waiter
    # when the holder commits. SQLite's own locking still guards any writer that skips this.
    with _SQLITE_WRITER:
        fd = _writer_file(engine)
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def write_txn(engine: Engine) -> Iterator[Connection]:
    lock = _sqlite_writer(engine) if engine.dialect.name == "sqlite" else nullcontext()
    with lock, engine.connect() as conn:
        conn = conn.execution_options(tp_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read_txn(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def current_revision(engine: Engine) -> str | None:
    try:
        with read_txn(engine) as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:
        return None


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head (a no-op when it is there already)."""
    if current_revision(engine) == HEAD:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(tp_write=True)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
    except Exception as exc:
        raise StorageError(f"cannot migrate {redacted(str(engine.url))}: {type(exc).__name__}") from exc
