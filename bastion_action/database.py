"""The PostgreSQL side (asyncpg only): probe, advisory lock, django_migrations snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg

from bastion_action.errors import ActionError, LockError, ProbeError
from bastion_action.report import ServerInfo
from bastion_action.settings import DatabaseSettings

APPLICATION_NAME = "bastion-migrate"
LOCK_NAMESPACE = int.from_bytes(b"bstn", "big")  # 1651733614, the first key of every lock the action takes
LOCK_POLL_SECONDS = 0.5
PROBE_ATTEMPTS = 4
_BACKOFF_SECONDS = (0.25, 0.5, 1.0)


async def connect(db: DatabaseSettings, port: int, timeout: float) -> asyncpg.Connection:
    """One connection through the tunnel; asyncpg's own errors are left to the caller."""
    return await asyncpg.connect(
        host="127.0.0.1",
        port=port,
        user=db.user,
        password=db.password,
        database=db.name,
        # asyncpg takes libpq's sslmode names as the `ssl` keyword.
        ssl=db.sslmode,
        timeout=timeout,
        command_timeout=timeout,
        server_settings={"application_name": APPLICATION_NAME},
    )


def _fatal(exc: BaseException, db: DatabaseSettings) -> ProbeError | None:
    """Errors that a retry cannot fix, translated; None for transient ones."""
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return ProbeError(
            f"the database refused user {db.user!r}: {exc}",
            hint="Check db-user and db-password (and pg_hba.conf for this user and address).",
            anchor="database-authentication",
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ProbeError(f"database {db.name!r} does not exist", hint="Check db-name.")
    if isinstance(exc, asyncpg.PostgresError):
        return ProbeError(f"the database answered with an error: {exc}", hint="See the message; check db-* inputs.")
    return None


def _unexplained() -> ActionError | None:
    return None


async def _connect_with_retries(
    db: DatabaseSettings, port: int, timeout: float, explain: Callable[[], ActionError | None]
) -> asyncpg.Connection:
    """Connect, retrying transient failures; ``explain`` may tell (at once) why the tunnel carried nothing."""
    last: BaseException | None = None
    for attempt in range(PROBE_ATTEMPTS):
        if attempt:
            await asyncio.sleep(_BACKOFF_SECONDS[min(attempt, len(_BACKOFF_SECONDS)) - 1])
        try:
            return await connect(db, port, timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # A channel the bastion refused explains whatever asyncpg then saw (a reset, a closed connection).
            fatal = explain() or _fatal(exc, db)
            if fatal:
                raise fatal from exc
            last = exc
    if isinstance(last, TimeoutError):
        reason = f"each attempt timed out after {timeout:g} s (connect-timeout)"
    else:
        reason = f"{type(last).__name__}: {last}" if last else "no answer"
    raise ProbeError(
        f"no database answered at {db.host}:{db.port} through the tunnel after {PROBE_ATTEMPTS} attempts ({reason})",
        hint="Check db-host and db-port as seen from the bastion, that the database is up and accepts "
        "connections from the bastion, and db-sslmode.",
        anchor="database-unreachable",
    ) from last


def lock_keys(database: str) -> tuple[int, int]:
    """The advisory lock's two int4 keys: a fixed namespace, and CRC-32 of the database name.

    Other tools take the same lock with
    ``SELECT pg_advisory_lock(1651733614, <crc32(dbname) as signed int4>)``.
    """
    crc = zlib.crc32(database.encode("utf-8"))
    return LOCK_NAMESPACE, crc - (1 << 32) if crc >= (1 << 31) else crc


@dataclasses.dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    client_addr: str | None
    user: str
    since: dt.datetime | None

    def describe(self) -> str:
        since = f" since {self.since:%Y-%m-%d %H:%M:%S %Z}" if self.since else ""
        app = self.application_name or "an unnamed client"
        return f"{app} (backend pid {self.pid}, user {self.user}, from {self.client_addr or 'a local socket'}){since}"


class Session:
    """The action's own connection through the tunnel: probe, lock, django_migrations snapshots."""

    def __init__(self, connection: asyncpg.Connection, db: DatabaseSettings, timeout: float) -> None:
        self.connection = connection
        self.db = db
        self.timeout = timeout
        self.locked = False

    async def describe(self) -> ServerInfo:
        with self._translated("reading the server's facts"):
            return await _describe(self.connection)

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """asyncpg's errors while ``doing`` something on this session, as probe-stage errors naming the cause."""
        try:
            yield
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ProbeError(
                f"user {self.db.user!r} lacks a privilege {doing} in database {self.db.name!r}: {exc}",
                hint="The action reads django_migrations (SELECT) and pg_locks / pg_stat_activity: "
                "GRANT SELECT ON django_migrations TO the migration user, or use the role that owns the tables.",
                anchor="missing-privilege",
            ) from exc
        except asyncpg.PostgresError as exc:
            raise ProbeError(
                f"the database answered {doing} with an error: {exc}", hint="See the message; check db-* inputs."
            ) from exc
        except (asyncpg.InterfaceError, OSError) as exc:
            raise ProbeError(
                f"the database connection broke {doing}: {exc}",
                hint="The database or the network ended the action's session; re-run, and check the database's logs.",
                anchor="database-unreachable",
            ) from exc

    async def lock(self, timeout: float, on_wait: Callable[[str], None]) -> float:
        """Take the advisory lock, waiting at most ``timeout`` s; returns the seconds waited."""
        key1, key2 = lock_keys(self.db.name)
        started = time.perf_counter()
        reported: LockHolder | None = None
        while True:
            if await self.connection.fetchval("SELECT pg_try_advisory_lock($1, $2)", key1, key2):
                self.locked = True
                return time.perf_counter() - started
            waited = time.perf_counter() - started
            holder = await self._holder(key1, key2)
            if holder and holder != reported:
                on_wait(f"lock: waiting for {holder.describe()}")
                reported = holder
            if waited >= timeout:
                held_by = holder.describe() if holder else "another session"
                raise LockError(
                    f"the migration lock on database {self.db.name!r} is held by {held_by}; "
                    f"gave up after {timeout:g} s (lock-timeout)",
                    hint="Another deploy is migrating this database. Wait for it, or raise lock-timeout; "
                    "if the holder is stuck, end its session (pg_terminate_backend) after checking.",
                )
            await asyncio.sleep(min(LOCK_POLL_SECONDS, max(timeout - waited, 0.01)))

    async def _holder(self, key1: int, key2: int) -> LockHolder | None:
        row = await self.connection.fetchrow(
            """
            SELECT a.pid, coalesce(a.application_name, '') AS app, host(a.client_addr) AS addr,
                   coalesce(a.usename::text, '') AS usr, a.backend_start
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
              AND l.classid = ($1::bigint & 4294967295)::oid AND l.objid = ($2::bigint & 4294967295)::oid
            LIMIT 1
            """,
            key1,
            key2,
        )
        if row is None:
            return None
        return LockHolder(
            pid=int(row["pid"]),
            application_name=str(row["app"]),
            client_addr=row["addr"],
            user=str(row["usr"]),
            since=row["backend_start"],
        )

    async def unlock(self) -> None:
        if self.locked and not self.connection.is_closed():
            key1, key2 = lock_keys(self.db.name)
            await self.connection.fetchval("SELECT pg_advisory_unlock($1, $2)", key1, key2)
        self.locked = False

    async def snapshot(self) -> list[tuple[str, str]]:
        """The rows of django_migrations, (app, name), in the order they were recorded."""
        with self._translated("reading django_migrations"):
            if not await self.connection.fetchval("SELECT to_regclass('django_migrations') IS NOT NULL"):
                return []
            rows = await self.connection.fetch("SELECT app, name FROM django_migrations ORDER BY id")
        return [(str(row["app"]), str(row["name"])) for row in rows]


@contextlib.asynccontextmanager
async def session(
    db: DatabaseSettings, port: int, timeout: float, explain: Callable[[], ActionError | None] = _unexplained
) -> AsyncIterator[Session]:
    """A connection through the tunnel, opened with bounded retries, closed (lock released) on exit.

    ``explain`` is asked after a failed attempt: an error it returns (e.g. the bastion refused the
    forwarded connection) ends the retries at once.
    """
    connection = await _connect_with_retries(db, port, timeout, explain)
    opened = Session(connection, db, timeout)
    try:
        yield opened
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(opened.unlock(), timeout)
        # Closing the session also releases the lock server-side, whatever happened above.
        with contextlib.suppress(Exception):
            await connection.close(timeout=timeout)
        if not connection.is_closed():
            connection.terminate()


async def _describe(connection: asyncpg.Connection) -> ServerInfo:
    started = time.perf_counter()
    await connection.fetchval("SELECT 1")
    rtt_ms = (time.perf_counter() - started) * 1000
    row = await connection.fetchrow(
        """
        SELECT current_setting('server_version') AS version,
               current_database() AS database,
               current_user AS "user",
               coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false) AS ssl,
               to_regclass('django_migrations') IS NOT NULL AS has_table
        """
    )
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    applied = None
    if row["has_table"]:
        applied = int(await connection.fetchval("SELECT count(*) FROM django_migrations"))
    return ServerInfo(
        version=str(row["version"]).split(" ")[0],
        database=str(row["database"]),
        user=str(row["user"]),
        ssl=bool(row["ssl"]),
        rtt_ms=rtt_ms,
        applied_migrations=applied,
    )
