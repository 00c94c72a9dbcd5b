"""Database engine, per-request sessions and migrations.

SQLite needs two adjustments to behave like a server database under concurrent requests:
foreign keys are switched on per connection, and write transactions start with
``BEGIN IMMEDIATE`` so that two writers queue on the lock (``busy_timeout``) instead of one of
them failing with "database is locked" when it upgrades a read lock mid-transaction.

Outages: PostgreSQL connections are checked before each use (``pool_pre_ping``), so connections a
restart or ``pg_terminate_backend`` killed while idle in the pool are replaced transparently; a
connection lost mid-transaction invalidates the pool (SQLAlchemy does that on a disconnect error).
:func:`unavailable` tells such errors from bugs: the app answers them 503 with ``Retry-After``,
read-only units of work run through :meth:`Database.read` (and ``in_db``) are tried once more, and
writes are never retried (a transaction either committed or did not; nothing is half-written).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelyard.errors import AlreadyExists

log = logging.getLogger("modelyard.db")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_WRITE_OPTION = "modelyard_write"
MAX_SESSIONS = 16
"""Sessions open at once per process; the connection pool holds as many (see db/session.py)."""
CONNECT_TIMEOUT_S = 10
"""Seconds a new PostgreSQL connection may take (libpq's default waits for the OS, minutes)."""
POOL_TIMEOUT_S = 10
"""Seconds a request waits for a pooled connection before it is answered 503."""


def unavailable(exc: BaseException) -> bool:
    """True for the errors of a database that cannot be reached or dropped the connection (or is too
    busy to answer in time): worth a 503 and a later retry, unlike a bug or a constraint violation."""
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):  # pool exhausted; pre-ping gave up
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return False


def disconnected(exc: BaseException) -> bool:
    """True when the connection itself was lost (the next attempt gets a fresh one)."""
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def utcnow() -> datetime:
    """Naive UTC, the form every timestamp column stores (SQLite keeps no time zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=MAX_SESSIONS,
            max_overflow=4,
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_connection.isolation_level = None  # let the "begin" hook below start transactions
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
            write = conn.get_execution_options().get(_WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() == "postgresql" else {}
    return create_engine(url, pool_size=MAX_SESSIONS, max_overflow=4, pool_pre_ping=True,
                         pool_timeout=POOL_TIMEOUT_S, connect_args=connect_args, hide_parameters=True)


class Database:
    """One engine and its session factory; lives on ``app.state.db``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.backend = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite admits one writer; queueing this process's writers on a lock is fair and prompt,
        # where SQLite's own busy handler polls with sleeps of up to 100 ms. Other processes still
        # meet busy_timeout. (A plain Lock may be released by another thread, as a request's
        # session can be opened and closed on different worker threads.)
        self._write_lock = threading.Lock() if self.backend == "sqlite" else None

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A unit of work: commits when the block ends normally, rolls back otherwise."""
        locked = write and self._write_lock is not None and self._write_lock.acquire()
        session = self._sessions()
        try:
            if write:
                session.connection(execution_options={_WRITE_OPTION: True})
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            if locked:
                self._write_lock.release()

    def read(self, fn: Callable[[Session], T]) -> T:
        """Run a read-only ``fn`` in one transaction; if the connection was lost under it (a
        restarted server, a killed backend), run it once more on a fresh connection."""
        try:
            with self.session() as session:
                return fn(session)
        except sa_exc.DBAPIError as exc:
            if not disconnected(exc):
                raise
            log.warning("database connection lost during a read; trying once more", extra={"error": str(exc)[:200]})
        time.sleep(0.05)
        with self.session() as session:
            return fn(session)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - health reports any failure as 'not reachable'
            return False

    def dispose(self) -> None:
        self.engine.dispose()


_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 22) -> str:
    """``prefix-`` + a random base58 string (about 128 bits with the default length)."""
    return f"{prefix}-" + "".join(secrets.choice(_BASE58) for _ in range(length))


def insert_unique(session: Session, row: object, conflict: str) -> None:
    """Insert ``row`` now; a unique-constraint failure becomes :class:`AlreadyExists` (409).

    The database decides, so concurrent creates of one name cannot both pass a read-then-write check.
    """
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise AlreadyExists(conflict) from None
