"""Where state that outlives a request lives: SQLite files on one machine (the default), or one
PostgreSQL database that several replicas share (`BOTMODELS_DATABASE_URL`).

Two things are kept there: job records (botmodels/generation/jobs.py) and the HMAC replay cache
(botmodels/auth.py). Both speak to a `Database`, which runs one statement at a time, written
once with `?` placeholders, on either backend; the SQL they use is common to SQLite and
PostgreSQL (`INSERT ... ON CONFLICT`, `COALESCE`), so their logic is not written twice.

Calls block (a lock, a network round trip): callers run them off the event loop
(`asyncio.to_thread` or their own executor). PostgreSQL's connections are autocommit (each
statement is its own transaction) and pooled (a few per process); a connection that fails is
dropped, and a statement that fails on a connection reused from the pool is tried once more on a
new one (the server may have restarted since). When the server cannot be reached, a statement
raises `DatabaseUnavailable` (a 503 with Retry-After), and the next one tries again.

The URL holds a password: it is kept as a secret, never logged, and every message about it shows
it with the password replaced by `***` (libpq's own messages can quote the URL: they are
never passed on).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import SecretStr

from botmodels.errors import DatabaseUnavailable

if TYPE_CHECKING:
    import psycopg

    from botmodels.config import Settings

log = logging.getLogger("botmodels.database")

SETTING = "BOTMODELS_DATABASE_URL"
# Taken by every replica around its migrations, so that replicas starting together apply them
# one after the other (the second finds them applied). Any constant unique to this schema.
_MIGRATION_LOCK = 0x626F746D6F64656C  # "botmodel"
# The PostgreSQL schema, one entry per version, applied in order, each once (schema_version).
# A new version is appended, never edited: a database at version n gets n+1.. only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        status      TEXT NOT NULL,
        request     TEXT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        started_at  DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        step        INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER NOT NULL DEFAULT 0,
        result      TEXT,
        error       TEXT,
        http_status INTEGER,
        owner       TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE INDEX IF NOT EXISTS jobs_active ON jobs (status, lease_until);
    CREATE TABLE IF NOT EXISTS used_signatures (
        signature  TEXT PRIMARY KEY,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS used_signatures_expiry ON used_signatures (expires_at);
    """,
)


class DatabaseSettingError(RuntimeError):
    """BOTMODELS_DATABASE_URL is malformed or names a database that cannot be used: the server
    does not start. The message names the setting and never holds the password."""


@dataclass
class Result:
    rowcount: int
    rows: list[tuple[Any, ...]] = field(default_factory=list)


class Database:
    """One statement at a time, thread-safe. `shared`: other processes or replicas see the same
    rows through another server (PostgreSQL), so nothing may assume it is alone."""

    shared = False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        raise NotImplementedError

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    """One SQLite file (WAL), one connection behind a lock: the writes are tiny."""

    def __init__(self, path: Path | None, *, busy_timeout_s: float = 5.0) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else path,
            isolation_level=None,
            check_same_thread=False,  # used under the lock only
            timeout=busy_timeout_s,
        )
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self._lock:
            cursor = self._db.execute(sql, tuple(params))
            rows = cursor.fetchall()
            return Result(cursor.rowcount, rows)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._db.executemany(sql, [tuple(p) for p in params])

    def executescript(self, script: str) -> None:
        with self._lock:
            self._db.executescript(script)

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --- PostgreSQL ---------------------------------------------------------------------------------
def _parts(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return None
    return parts


def redact(url: str) -> str:
    """The URL with its password replaced by `***` (the one form any message may show)."""
    parts = _parts(url)
    if parts is None or not parts.netloc:
        return "<a value that is not a URL>"
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return parts._replace(netloc=f"{name}:***@{host}").geturl()


def scrub(message: str, url: str) -> str:
    """`message` with the URL's password (as written and as decoded) replaced by `***`."""
    parts = _parts(url)
    password = parts.password if parts is not None else None
    if parts is None:  # unparsable: hide whatever sits between the first ':' and '@' of it
        before, at, _ = url.partition("@")
        password = before.partition("//")[2].partition(":")[2] if at else None
    message = message.replace(url, redact(url))
    for secret in {password, unquote(password)} if password else ():
        if secret:
            message = message.replace(secret, "***")
    return " ".join(message.split())  # libpq's are several lines


def check_url(url: str) -> None:
    """Refuse a URL that is not a PostgreSQL one, naming the setting and hiding the password."""
    parts = _parts(url)
    hint = "expected postgresql://user:password@host:5432/database"
    if parts is None or parts.scheme not in ("postgresql", "postgres"):
        raise DatabaseSettingError(f"{SETTING} is not a PostgreSQL URL ({redact(url)}): {hint}")
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - libpq's message can quote the URL: replaced, never shown
        raise DatabaseSettingError(
            f"{SETTING} is not a valid PostgreSQL URL ({redact(url)}): {hint}, with "
            "percent-encoded special characters in the user and password"
        ) from None


class PostgresDatabase(Database):
    """A few autocommit connections to one PostgreSQL database, shared by every replica."""

    shared = True

    def __init__(
        self, url: str, *, pool_size: int = 4, connect_timeout_s: int = 5, migrate: bool = True
    ) -> None:
        check_url(url)
        self._url = url
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        try:
            if migrate:
                self.migrate()
            else:
                self.execute("SELECT 1")
        except DatabaseUnavailable as exc:
            raise DatabaseSettingError(
                f"{SETTING}: cannot use the PostgreSQL database at {redact(url)}: {exc.message}"
            ) from None

    @property
    def display_url(self) -> str:
        return redact(self._url)

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(
                self._url, autocommit=True, connect_timeout=self.connect_timeout_s
            )
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                "the database is unreachable: " + scrub(str(exc).strip(), self._url)
            ) from None

    @contextmanager
    def _connection(self) -> Iterator[tuple[psycopg.Connection[Any], bool]]:
        """A pooled connection (and whether it was reused), returned to the pool unless the
        caller's statement broke it."""
        import psycopg

        if not self._slots.acquire(timeout=self.connect_timeout_s):
            raise DatabaseUnavailable("every database connection is busy")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None and not conn.closed
            if conn is None or conn.closed:
                conn = self._connect()
            try:
                yield conn, reused
            except (psycopg.OperationalError, psycopg.InterfaceError):
                conn.close()
                raise
            if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    def _run(self, sql: str, params: Sequence[Any], many: bool) -> Result:
        import psycopg

        statement = sql.replace("?", "%s")  # our SQL holds no literal '?' or '%'
        for attempt in (1, 2):
            try:
                with self._connection() as (conn, reused):
                    try:
                        with conn.cursor() as cursor:
                            if many:
                                cursor.executemany(statement, params)
                                return Result(cursor.rowcount)
                            cursor.execute(statement, tuple(params))
                            rows = cursor.fetchall() if cursor.description else []
                            return Result(cursor.rowcount, rows)
                    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                        if reused and attempt == 1:
                            raise _Retry from None
                        raise DatabaseUnavailable(
                            "the database connection failed: " + scrub(str(exc).strip(), self._url)
                        ) from None
            except _Retry:
                continue
        raise AssertionError("unreachable")  # pragma: no cover

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self._run(sql, params, many=False)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self._run(sql, params, many=True)

    def migrate(self) -> int:
        """Bring the schema to the last version of MIGRATIONS, under an advisory lock held for
        the transaction (replicas starting together wait for each other). The version it is at."""
        import psycopg

        conn = self._connect()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version "
                    "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
                )
                row = conn.execute(
                    "SELECT version FROM schema_version WHERE component = 'botmodels'"
                ).fetchone()
                version = int(row[0]) if row else 0
                for step in MIGRATIONS[version:]:
                    conn.execute(step)  # our own constant DDL
                if version < len(MIGRATIONS):
                    conn.execute(
                        "INSERT INTO schema_version (component, version) VALUES ('botmodels', %s) "
                        "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                        (len(MIGRATIONS),),
                    )
                    log.info("database schema: version %d -> %d", version, len(MIGRATIONS))
            return len(MIGRATIONS)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                "migrating the schema failed: " + scrub(str(exc).strip(), self._url)
            ) from None
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Retry(Exception):
    """A reused connection failed: the statement is tried once on a new one."""


@lru_cache(maxsize=4)
def _open(url: str) -> PostgresDatabase:
    started = time.monotonic()
    database = PostgresDatabase(url)
    log.warning(
        "shared state (jobs, replay cache) in PostgreSQL at %s (%.0f ms to connect and migrate)",
        database.display_url,
        (time.monotonic() - started) * 1000,
    )
    return database


def shared_database(settings: Settings) -> PostgresDatabase | None:
    """The replicas' PostgreSQL database when BOTMODELS_DATABASE_URL is set (one per process,
    opened and migrated on first use: at start-up), else None (SQLite files under <home>)."""
    secret: SecretStr | None = settings.database_url
    if secret is None:
        return None
    return _open(secret.get_secret_value())
