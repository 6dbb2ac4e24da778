"""The PostgreSQL side: asyncpg probe through the tunnel."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bastion_action.errors import ProbeError
from bastion_action.report import ServerInfo
from bastion_action.settings import DatabaseSettings

APPLICATION_NAME = "bastion-migrate"
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


async def probe(db: DatabaseSettings, port: int, timeout: float) -> ServerInfo:
    """Connect through the tunnel (bounded retries with backoff) and describe the server."""
    last: BaseException | None = None
    for attempt in range(PROBE_ATTEMPTS):
        if attempt:
            await asyncio.sleep(_BACKOFF_SECONDS[min(attempt, len(_BACKOFF_SECONDS)) - 1])
        try:
            connection = await connect(db, port, timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            fatal = _fatal(exc, db)
            if fatal:
                raise fatal from exc
            last = exc
            continue
        try:
            return await _describe(connection)
        finally:
            await connection.close(timeout=timeout)
    reason = f"{type(last).__name__}: {last}" if last else "no answer"
    raise ProbeError(
        f"no database answered at {db.host}:{db.port} through the tunnel after {PROBE_ATTEMPTS} attempts ({reason})",
        hint="Check db-host and db-port as seen from the bastion, that the database is up, "
        "and that the bastion may forward to it (AllowTcpForwarding / PermitOpen).",
        anchor="database-unreachable",
    ) from last


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
