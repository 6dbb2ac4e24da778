"""The PostgreSQL side (asyncpg only): probe, advisory lock, django_migrations snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg

from bastion_action.errors import ActionError, ProbeError
from bastion_action.lint import TableFacts
from bastion_action.lock import APPLICATION_NAME, RELEASE_SECONDS, Lease
from bastion_action.report import ServerInfo
from bastion_action.settings import DatabaseSettings

PROBE_ATTEMPTS = 4
_BACKOFF_SECONDS = (0.25, 0.5, 1.0)
_GONE_POLL_SECONDS = 0.05


@dataclasses.dataclass(frozen=True)
class Ended:
    """A session of the command that outlived it on the server, and was ended."""

    pid: int
    state: str  # as pg_stat_activity said: active, idle in transaction, ...
    seconds: float  # since its transaction (or else its statement) started
    gone: bool  # the server process had exited (its transaction rolled back, its locks freed) when the wait ended


class SessionsUnknown(Exception):  # noqa: N818 - what it says, not an "Error" of the database
    """The command's sessions on the server could not be looked for (the database unreachable, or refusing)."""


class _NamedTLS(ssl.SSLContext):
    """Checks the certificate against ``server_name`` (db-host) where asyncpg names the address it dials.

    asyncpg (0.32) passes the address it connects to, 127.0.0.1 here, as the TLS server name, and
    has no parameter to name another; asyncio's TLS layer hands that name to ``wrap_bio``.
    """

    server_name: str | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        name = self.server_name if self.server_name is not None else server_hostname
        return super().wrap_bio(incoming, outgoing, server_side, name, session)


def tls_context(db: DatabaseSettings) -> ssl.SSLContext | str:
    """What asyncpg's ``ssl`` takes: a context verifying against db-sslrootcert, else libpq's sslmode name."""
    if not db.sslrootcert:
        return db.sslmode
    context = _NamedTLS(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=db.sslrootcert)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = db.sslmode == "verify-full"
    if context.check_hostname:
        context.server_name = db.host
    return context


def verified_name(db: DatabaseSettings) -> str | None:
    """The name the database's certificate was checked against (verify-full); None when no name is checked."""
    return db.host if db.sslrootcert and db.sslmode == "verify-full" else None


async def connect(db: DatabaseSettings, port: int, timeout: float) -> asyncpg.Connection:
    """One connection through the tunnel; asyncpg's own errors are left to the caller."""
    return await asyncpg.connect(
        host="127.0.0.1",
        port=port,
        user=db.user,
        password=db.password,
        database=db.name,
        # asyncpg takes libpq's sslmode names as the `ssl` keyword, or a context that verifies (always required).
        ssl=tls_context(db),
        timeout=timeout,
        command_timeout=timeout,
        server_settings={"application_name": APPLICATION_NAME},
    )


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH: the chain is trusted, the name is not in the certificate.
_HOSTNAME_MISMATCH = 62


def _untrusted(exc: ssl.SSLCertVerificationError, db: DatabaseSettings) -> ProbeError:
    if exc.verify_code == _HOSTNAME_MISMATCH:
        return ProbeError(
            f"the database's certificate does not name {db.host} (db-host): {exc.verify_message}",
            hint="With db-sslmode: verify-full, db-host must be a name the certificate carries: use the host "
            "name your provider gives (not its address), or db-sslmode: verify-ca to check the CA alone.",
            anchor="database-certificate",
        )
    return ProbeError(
        f"the database's certificate is not signed by db-sslrootcert: {exc.verify_message}",
        hint="db-sslrootcert must be the CA certificate of this database (DigitalOcean: the cluster's "
        "'CA certificate' download); a man in the middle would fail the same way.",
        anchor="database-certificate",
    )


def _fatal(exc: BaseException, db: DatabaseSettings) -> ProbeError | None:
    """Errors that a retry cannot fix, translated; None for transient ones."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _untrusted(exc, db)
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return ProbeError(
            f"the database refused user {db.user!r}: {exc}" + db.source("db-user", "db-password"),
            hint="Check db-user and db-password (and pg_hba.conf for this user and address).",
            anchor="database-authentication",
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ProbeError(
            f"database {db.name!r} does not exist" + db.source("db-name", "databases"), hint="Check db-name."
        )
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
        reason = _reason(last) if last else "no answer"
    raise ProbeError(
        f"no database answered at {db.host}:{db.port} through the tunnel after {PROBE_ATTEMPTS} attempts ({reason})",
        hint="Check db-host and db-port as seen from the bastion, that the database is up and accepts "
        "connections from the bastion, and db-sslmode.",
        anchor="database-unreachable",
    ) from last


class Session:
    """The action's own connection through the tunnel: probe, lock, django_migrations snapshots."""

    def __init__(self, connection: asyncpg.Connection, db: DatabaseSettings, timeout: float) -> None:
        self.connection = connection
        self.db = db
        self.timeout = timeout
        self.guard = asyncio.Lock()  # asyncpg runs one query at a time per connection
        self.lease = Lease(connection, db.name, self.guard)

    async def describe(self) -> ServerInfo:
        async with self.guard:
            with self._translated("reading the server's facts"):
                db = self.db
                return await _describe(self.connection, ca_verified=bool(db.sslrootcert), verified_as=verified_name(db))

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
        except TimeoutError as exc:  # asyncpg's command_timeout; an OSError too, but no broken connection
            raise ProbeError(
                f"the database did not answer {doing} within {self.timeout:g} s (connect-timeout)",
                hint="A lock another session holds makes the query wait (on django_migrations, say: a "
                "LOCK TABLE, a VACUUM FULL; see pg_locks), or the database is overloaded. End that session "
                "or raise connect-timeout.",
                anchor="database-unreachable",
            ) from exc
        except (asyncpg.InterfaceError, OSError) as exc:
            raise ProbeError(
                f"the database connection broke {doing}: {exc}",
                hint="The database or the network ended the action's session; re-run, and check the database's logs.",
                anchor="database-unreachable",
            ) from exc

    async def lock(self, timeout: float, lease: float, on_wait: Callable[[str], None]) -> float:
        """Take the advisory lock, waiting at most ``timeout`` s, and hold it as a lease; returns the seconds waited."""
        async with self.guard:
            return await self.lease.acquire(timeout, lease, on_wait)

    async def start_lease(self, lease: float) -> None:
        """From now on the server ends this session after ``lease`` s of silence, and the action speaks."""
        async with self.guard:
            with self._translated("binding the session to the lock's lease"):
                await self.lease.start(lease)

    async def unlock(self) -> None:
        """Release the lock; bounded (the heartbeat may hold the connection on a silent link): past the bound the
        connection is dropped, which releases the lock once the server notices, at the latest when the lease ends."""
        try:
            async with asyncio.timeout(2 * RELEASE_SECONDS), self.guard:
                await self.lease.release()
        except TimeoutError:
            self.connection.terminate()

    async def snapshot(self) -> list[tuple[str, str]]:
        """The rows of django_migrations, (app, name), in the order they were recorded."""
        async with self.guard:
            with self._translated("reading django_migrations"):
                if not await self.connection.fetchval("SELECT to_regclass('django_migrations') IS NOT NULL"):
                    return []
                rows = await self.connection.fetch("SELECT app, name FROM django_migrations ORDER BY id")
        return [(str(row["app"]), str(row["name"])) for row in rows]

    async def end_sessions(self, application_name: str, port: int, wait: float) -> list[Ended]:
        """End the sessions called ``application_name`` still on the server (a command's, once it has ended).

        On this session's connection; if that one is gone (the lock's lease lost, say), on a new one
        through ``port``. Each is ended with ``pg_terminate_backend``: its statement stops and its
        transaction rolls back, freeing its locks. Returns them once their server processes have
        exited, or after ``wait`` seconds.
        """
        broken: BaseException | None = None  # this session's failure, if it was tried
        if not self.connection.is_closed():
            try:
                async with self.guard:
                    return await _end_sessions(self.connection, application_name, wait)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                broken = exc
        try:
            connection = await connect(self.db, port, self.timeout)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, ssl.SSLError) as exc:
            raise SessionsUnknown(_reason(exc)) from (broken or exc)
        try:
            return await _end_sessions(connection, application_name, wait)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise SessionsUnknown(_reason(exc)) from exc
        finally:
            connection.terminate()

    async def table_facts(self, names: list[str]) -> dict[str, TableFacts]:
        """Each existing table's estimated rows and size (pg_class), and the other sessions' locks on it; read only."""
        async with self.guard:
            with self._translated("reading the tables' size and locks"):
                return await _table_facts(self.connection, names)


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
        # Bounded, not by connect-timeout: on a link gone silent a cancelled run must still end within 10 s.
        with contextlib.suppress(Exception):
            await opened.unlock()
        # Closing the session also releases the lock server-side, whatever happened above.
        with contextlib.suppress(Exception):
            await connection.close(timeout=RELEASE_SECONDS)
        if not connection.is_closed():
            connection.terminate()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _end_sessions(connection: asyncpg.Connection, application_name: str, wait: float) -> list[Ended]:
    # Idle ones too: one ends by itself on the EOF its closed connection brings, unless what was sent before the
    # gate closed is still on its way. Only this login role's: the command connects as it, and only those may be ended.
    rows = await connection.fetch(
        """
        SELECT pid, state, seconds, pg_terminate_backend(pid) AS ended
        FROM (SELECT pid, state,
                     extract(epoch FROM clock_timestamp() - coalesce(xact_start, query_start, backend_start))::float8
                       AS seconds
              FROM pg_stat_activity
              WHERE application_name = $1 AND datname = current_database() AND usename = session_user
                AND backend_type = 'client backend' AND pid <> pg_backend_pid()) AS named
        """,
        application_name,
    )
    pids = [int(row["pid"]) for row in rows if row["ended"]]
    left = set(pids)
    deadline = time.monotonic() + wait
    while left and time.monotonic() < deadline:
        await asyncio.sleep(_GONE_POLL_SECONDS)
        still = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids)
        left = {int(row["pid"]) for row in still}
    return [
        Ended(
            pid=int(row["pid"]),
            state=str(row["state"] or "starting"),  # not yet past authentication
            seconds=float(row["seconds"] or 0),
            gone=row["pid"] not in left,
        )
        for row in rows
        if row["ended"]
    ]


async def _describe(connection: asyncpg.Connection, *, ca_verified: bool, verified_as: str | None) -> ServerInfo:
    started = time.perf_counter()
    # One round trip: without arguments asyncpg sends a simple query (fetchval would prepare first: two).
    await connection.execute("SELECT 1")
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
        ca_verified=ca_verified,
        verified_as=verified_as,
    )


async def _table_facts(connection: asyncpg.Connection, names: list[str]) -> dict[str, TableFacts]:
    rows = await connection.fetch(
        """
        SELECT t.name, c.reltuples::float8 AS reltuples, c.relpages, pg_total_relation_size(c.oid) AS bytes,
               (SELECT count(DISTINCT l.pid) FROM pg_locks l
                 WHERE l.relation = c.oid AND l.granted AND l.pid <> pg_backend_pid()) AS lockers,
               (SELECT max(extract(epoch FROM clock_timestamp() - a.xact_start)) FROM pg_stat_activity a
                 WHERE a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
                   AND a.pid IN (SELECT l.pid FROM pg_locks l WHERE l.relation = c.oid AND l.granted))::float8
                 AS oldest
        FROM unnest($1::text[]) AS t(name)
        JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
        """,
        names,
    )
    found = {}
    for row in rows:
        reltuples, pages = float(row["reltuples"]), int(row["relpages"])
        # PostgreSQL 14+: -1 until the first ANALYZE or VACUUM; a table of no pages is empty all the same.
        count = round(max(reltuples, 0)) if reltuples >= 0 or pages == 0 else None
        found[str(row["name"])] = TableFacts(
            rows=count,
            bytes=int(row["bytes"]),
            lockers=int(row["lockers"]),
            oldest_transaction_seconds=None if row["oldest"] is None else float(row["oldest"]),
        )
    return found
