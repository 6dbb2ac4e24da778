"""The migration lock (asyncpg): a PostgreSQL advisory lock held as a lease, and who holds it when it is taken.

The lock lives in the action's own session. PostgreSQL releases it when that session ends,
so the session is the lease: once the lock is held the server is told to end the session
after ``lease`` seconds of silence (``idle_session_timeout``, PostgreSQL 14 and newer), and
the action speaks every third of that. A runner that vanishes leaves the lock held for at
most ``lease`` seconds; a session that ends under a live run (a DBA's pg_terminate_backend,
a proxy's idle timeout) is noticed at once, and the run fails in the ``lock`` stage.

A holder that is a session of this action and has been idle for longer than the lease is
stale: a live run speaks every third of its lease, so this is a run that died where the
server could not end its session (PostgreSQL < 14, a holder without a lease). Waiting names it
as such, and with ``break_stale`` the waiting run ends it and takes the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
import zlib
from collections.abc import Callable

import asyncpg

from bastion_action.errors import LockError

LOCK_NAMESPACE = int.from_bytes(b"bstn", "big")  # 1651733614, the first key of every lock the action takes
LOCK_POLL_SECONDS = 0.5
HEARTBEATS_PER_LEASE = 3
IDLE_SESSION_TIMEOUT_SINCE = 140000  # server_version_num of PostgreSQL 14
APPLICATION_NAME = "bastion-migrate"  # every session of the action, so a holder can be told apart
# The unlock waits this long for the server; past it (a link gone silent) the session is dropped instead,
# which releases the lock as soon as the server notices (at the latest when the lease runs out).
RELEASE_SECONDS = 1.0


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
    idle_seconds: float | None = None  # how long the session has been idle (outside a transaction), if it is

    def describe(self) -> str:
        since = f" since {self.since:%Y-%m-%d %H:%M:%S %Z}" if self.since else ""
        app = self.application_name or "an unnamed client"
        return f"{app} (backend pid {self.pid}, user {self.user}, from {self.client_addr or 'a local socket'}){since}"

    def stale(self, lease: float) -> bool:
        """A session of this action silent for longer than a lease: no live run is (it speaks every third)."""
        return self.application_name == APPLICATION_NAME and self.idle_seconds is not None and self.idle_seconds > lease

    def why_stale(self, lease: float) -> str:
        assert self.idle_seconds is not None  # noqa: S101 - asked only of a stale holder
        return (
            f"idle for {duration(self.idle_seconds)}, longer than its {lease:g} s lease (lock-lease-seconds): "
            "probably a dead run"
        )


def duration(seconds: float) -> str:
    """``45 s``, ``3 min``, ``2.5 h``: how long, as a person reads it."""
    if seconds < 120:  # noqa: PLR2004
        return f"{seconds:.0f} s"
    if seconds < 7200:  # noqa: PLR2004
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Lease:
    """The advisory lock of one database on one session: taken with a bounded wait, then kept alive and watched."""

    def __init__(self, connection: asyncpg.Connection, database: str, guard: asyncio.Lock) -> None:
        self.connection = connection
        self.guard = guard  # one query at a time on the session: the heartbeat waits for the others
        self.database = database
        self.keys = lock_keys(database)
        self.held = False
        self.seconds: float | None = None  # the lease, once the lock is held
        self.server_bound = False  # whether the server itself ends a silent session (idle_session_timeout)
        self.lost: asyncio.Future[LockError] = asyncio.get_running_loop().create_future()
        self.unanswered = False  # lost because the heartbeat went unanswered (the link may be the cause)
        self.break_stale = False  # end a stale holder (see the module's docstring) instead of waiting for it
        self.broken: list[LockHolder] = []  # the stale holders this lease ended
        self._heartbeat: asyncio.Task[None] | None = None

    async def acquire(self, timeout: float, lease: float, on_wait: Callable[[str], None]) -> float:
        """Take the lock, waiting at most ``timeout`` s, then hold it as a ``lease``; returns the seconds waited."""
        started = time.perf_counter()
        try:
            await self._wait(started, timeout, lease, on_wait)
            if self._heartbeat is None:
                await self._bind(lease)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise LockError(
                f"the session taking the migration lock on database {self.database!r} ended: {exc}",
                hint="The database, an administrator (pg_terminate_backend) or the network ended the action's "
                "session while it took the lock. Re-run; if it repeats, check the database's logs.",
                anchor="lock-lost",
            ) from exc
        return time.perf_counter() - started

    async def _wait(self, started: float, timeout: float, lease: float, on_wait: Callable[[str], None]) -> None:
        reported: tuple[int, bool] | None = None  # the holder last named, and whether it was named stale
        while True:
            if await self.connection.fetchval("SELECT pg_try_advisory_lock($1, $2)", *self.keys):
                self.held = True
                return
            waited = time.perf_counter() - started
            holder = await self._holder()
            stale = holder is not None and holder.stale(lease)
            if holder and stale and self.break_stale and holder.pid not in {ended.pid for ended in self.broken}:
                on_wait(await self._break(holder, lease))
                reported = (holder.pid, True)  # until its backend has exited, it still shows as the holder
                continue
            if holder and (holder.pid, stale) != reported:
                note = f": {holder.why_stale(lease)}" if stale else ""
                on_wait(f"lock: waiting for {holder.describe()}{note}")
                reported = (holder.pid, stale)
            if waited >= timeout:
                held_by = holder.describe() if holder else "another session"
                hint = (
                    "Another deploy is migrating this database. Wait for it, or raise lock-timeout; "
                    "if the holder is stuck, end its session (pg_terminate_backend) after checking."
                )
                if holder and stale:
                    held_by += f", {holder.why_stale(lease)}"
                    hint = (
                        "The holder is a run of this action that has been silent for longer than a lease: its "
                        "runner is most likely gone. Set lock-break-stale: true to let the next run end it, or end "
                        f"it yourself (SELECT pg_terminate_backend({holder.pid})) after checking pg_stat_activity."
                    )
                raise LockError(
                    f"the migration lock on database {self.database!r} is held by {held_by}; "
                    f"gave up after {timeout:g} s (lock-timeout)",
                    hint=hint,
                )
            await asyncio.sleep(min(LOCK_POLL_SECONDS, max(timeout - waited, 0.01)))

    async def _break(self, holder: LockHolder, lease: float) -> str:
        """End a stale holder's session, if it is still that holder and still stale; says what happened."""
        why = holder.why_stale(lease)
        try:
            # Checked again in the same statement: a holder that spoke or let go meanwhile is left alone.
            ended = await self.connection.fetchval(
                """
                SELECT pg_terminate_backend(a.pid)
                FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
                WHERE a.pid = $3 AND a.application_name = $4 AND a.state = 'idle'
                  AND a.state_change < clock_timestamp() - make_interval(secs => $5)
                  AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                  AND l.classid = ($1::bigint & 4294967295)::oid AND l.objid = ($2::bigint & 4294967295)::oid
                """,
                *self.keys,
                holder.pid,
                APPLICATION_NAME,
                lease,
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            self.break_stale = False  # the role cannot: wait as if not asked, naming the holder as stale
            return (
                f"lock: could not end {holder.describe()} ({why}): {exc}; ending another role's session "
                "needs membership in that role or in pg_signal_backend"
            )
        if not ended:
            return f"lock: {holder.describe()} is no longer stale or no longer holds the lock; not ended"
        self.broken.append(holder)
        return f"lock: ended {holder.describe()}, {why} (lock-break-stale)"

    async def start(self, lease: float) -> None:
        """Bind the session to the lease before the lock is taken, so a role's own shorter
        ``idle_session_timeout`` cannot end it while the run waits (for the pull, say)."""
        if self._heartbeat is None:
            await self._bind(lease)

    async def _bind(self, lease: float) -> None:
        """The server ends this session after ``lease`` s of silence; the action speaks well within it."""
        self.seconds = lease
        if self.connection.get_server_version().major * 10000 >= IDLE_SESSION_TIMEOUT_SINCE:
            await self.connection.execute(f"SET idle_session_timeout = {int(lease * 1000)}")
            self.server_bound = True
        self.connection.add_termination_listener(self._terminated)
        self._heartbeat = asyncio.ensure_future(self._beat(lease / HEARTBEATS_PER_LEASE))

    def _terminated(self, _connection: object) -> None:
        self._lose("its session was ended (by the server, an administrator's pg_terminate_backend, or the network)")

    def _lose(self, why: str) -> None:
        if self.held and not self.lost.done():
            self.lost.set_result(
                LockError(
                    f"the migration lock on database {self.database!r} was lost: {why}; "
                    "the command was stopped so that no other run migrates alongside it",
                    hint="Check the database's logs for why the action's session ended (idle_session_timeout, "
                    "pg_terminate_backend, a connection pooler or proxy timeout), then re-run. A session that did not "
                    "answer is usually a silent network link: with 3 ssh-keepalive-interval shorter than a third of "
                    "lock-lease-seconds, a dead SSH link is reported as such first.",
                    anchor="lock-lost",
                )
            )

    async def _beat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.guard, asyncio.timeout(interval):
                    await self.connection.fetchval("SELECT 1")
            except TimeoutError:
                self.unanswered = True
                self._lose(f"its session did not answer within {interval:g} s (a silent link, or a stuck server)")
                return
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                self._lose(f"its session failed ({exc})")
                return

    async def _holder(self) -> LockHolder | None:
        row = await self.connection.fetchrow(
            """
            SELECT a.pid, coalesce(a.application_name, '') AS app, host(a.client_addr) AS addr,
                   coalesce(a.usename::text, '') AS usr, a.backend_start,
                   CASE WHEN a.state = 'idle'
                        THEN extract(epoch FROM clock_timestamp() - a.state_change)::float8 END AS idle
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
              AND l.classid = ($1::bigint & 4294967295)::oid AND l.objid = ($2::bigint & 4294967295)::oid
            LIMIT 1
            """,
            *self.keys,
        )
        if row is None:
            return None
        return LockHolder(
            pid=int(row["pid"]),
            application_name=str(row["app"]),
            client_addr=row["addr"],
            user=str(row["usr"]),
            since=row["backend_start"],
            idle_seconds=row["idle"],
        )

    async def release(self) -> None:
        """Stop the heartbeat and unlock (closing the session releases it too, whatever happens here)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self.held:
            self.connection.remove_termination_listener(self._terminated)
            # A lost lease's session is dead or unusable (a heartbeat cancelled mid-query aborts it): nothing to say.
            if not self.connection.is_closed() and not self.lost.done():
                try:
                    await self.connection.fetchval(
                        "SELECT pg_advisory_unlock($1, $2)", *self.keys, timeout=RELEASE_SECONDS
                    )
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                    self.connection.terminate()
        self.held = False
