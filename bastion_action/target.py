"""One database's path: gate -> tunnel -> probe -> lock -> command -> results.

A run works on one database, or on several behind the same bastion (fan-out);
either way each database goes through ``run_database`` with what the run shares
(``Shared``: the SSH connection, the runner, the prepared image), built once.

The command's end of the tunnel (the gate) is bound before anything slow, so the
command starts first; its connections reach the database only once the lock is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from bastion_action import aio, cafile, django_shell, lint, operations, outcome, rollback, show_sql
from bastion_action.clock import Clock
from bastion_action.errors import CommandError, PendingMigrationsError, Stage, TunnelError
from bastion_action.gha import Console
from bastion_action.launch import Launched, launch
from bastion_action.report import TAIL_LINES, Result, RunResult
from bastion_action.runners import Runner, command_argv, title
from bastion_action.settings import Command, DatabaseSettings, Settings

if TYPE_CHECKING:
    from bastion_action import database, tunnel
    from bastion_action.gates import Gate
    from bastion_action.lock import Lease

_T = TypeVar("_T")
LINK_GRACE_SECONDS = 0.5
# What a command left busy on the server is ended before the lock goes: this long at most (a cancelled run
# ends within 10 s), half of it waiting for the ended sessions' server processes to exit.
LEFTOVER_SECONDS = 2.0
# show-sql, which never fails the run, stops this long before the run's timeout: the run ends as it would have.
SHOW_SQL_MARGIN_SECONDS = 5.0
COMMAND_SESSION_PREFIX = "bastion-migrate command"  # its sessions' application_name: this, then the path's own token


@dataclasses.dataclass(frozen=True)
class Shared:
    """What every database of a run uses, built once by the pipeline."""

    settings: Settings
    console: Console
    runner: Runner | None  # where the command runs; None for `probe`, which runs nothing
    chain: asyncio.Future[tunnel.Chain]  # the SSH connection to the bastion, once it is up
    second: Runner | None = None  # compare mode: the image's view, run after the runner's
    deadline: float | None = None  # when the run's timeout ends it (the event loop's clock); None: never


@dataclasses.dataclass(frozen=True)
class Target:
    """One database of the run, its bound gate socket, and where its results go."""

    db: DatabaseSettings
    sock: socket.socket
    result: RunResult
    clock: Clock
    label: str = ""  # fan-out: the database's name, prefixed to its log lines

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def tunnel_dropped() -> TunnelError:
    return TunnelError(
        "the SSH connection to the bastion ended while the run used it; what was running was stopped",
        hint="The bastion or the network dropped the link (keepalives went unanswered). "
        "Re-run; if it repeats, check the bastion's sshd logs and idle timeouts.",
        anchor="tunnel-dropped",
    )


async def while_tunnel_up(work: Awaitable[_T], opened: tunnel.Tunnel) -> _T:
    """The work's result, unless the tunnel ends first: then the work is stopped (never a hang on a dead link)."""
    running = asyncio.ensure_future(work)
    dropped = asyncio.ensure_future(opened.wait_closed())
    try:
        await asyncio.wait({running, dropped}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            return running.result()
    finally:
        await aio.stop(running, dropped)
    raise tunnel_dropped()


async def guarded(
    work: Awaitable[_T],
    lease: Lease,
    gate: Gate,
    opened: tunnel.Tunnel,
    *,
    link_verdict: float,
    leftovers: Callable[[], Awaitable[None]],
) -> _T:
    """The work's result, unless the lock is lost first.

    Then the command's connections are cut at once and what it has running on the server is ended
    (``leftovers``: another run may take the lock from now on, and must not migrate alongside a live
    session of this one), and the work is stopped. Only then is the cause told: a lease that
    ended because the SSH link did is the tunnel's failure. A heartbeat that went unanswered
    may be a silent link, which the SSH keepalives declare dead within ``link_verdict``
    seconds: that long, at most, the verdict waits for them.
    """
    if not lease.held:
        return await work
    running = asyncio.ensure_future(work)
    dropped = asyncio.ensure_future(opened.wait_closed())
    try:
        waiters: set[asyncio.Future[Any]] = {running, lease.lost}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            return running.result()
        gate.close()
        await aio.to_the_end(leftovers())
        await aio.stop(running)
        await asyncio.wait({dropped}, timeout=link_verdict if lease.unanswered else LINK_GRACE_SECONDS)
        if dropped.done():
            raise tunnel_dropped()
        raise lease.lost.result()
    finally:
        await aio.stop(running, dropped)


class _Database:
    """The state of one database's path while it runs (see ``run_database``)."""

    def __init__(self, shared: Shared, target: Target, url: str) -> None:
        self.shared = shared
        self.target = target
        self.settings = dataclasses.replace(shared.settings, db=target.db)
        self.console = shared.console
        self.result = target.result
        self.clock = target.clock
        self.url = url  # the command's DATABASE_URL: the gate's port, and the CA file when there is one
        self.main: Launched | None = None
        # What the command's sessions are called on the server (PGAPPNAME): this database's, in this run only.
        self.application_name = f"{COMMAND_SESSION_PREFIX} {secrets.token_hex(4)}"
        self.leftovers_ended = False  # the command's sessions left on the server were looked for (end_leftovers)
        self.marker = ""  # rollback: the marker of its step's answer
        self.check: rollback.Check | None = None  # rollback: what its step answered

    def labelled(self, text: str) -> str:
        """In a fan-out, the text after the database's label: ``[shop_a] text``."""
        label = self.target.label
        return f"[{label}] {text}" if label else text

    def say(self, text: str) -> None:
        self.console.line(self.labelled(text))

    def debug(self, text: str) -> None:
        self.console.debug(self.labelled(text))

    def launch(self, runner: Runner, argv: list[str], shown: str, conceal: str = "") -> Launched:
        return launch(
            self.console,
            runner,
            argv,
            self.labelled(shown),
            database_url=self.url,
            hold=bool(self.target.label),  # fan-out: its output shown whole at its end
            conceal=conceal,
            application_name=self.application_name,
        )

    def launch_main(self) -> None:
        runner = self.shared.runner
        if runner is None or self.main is not None:
            return
        if self.settings.command is Command.ROLLBACK:
            targets = self.target.db.rollback_targets
            self.result.rollback_asked = dict(targets)
            self.marker = rollback.new_marker()
            argv = rollback.argv(self.settings.app.manage_py, self.marker, targets)
            where = f"{runner.where}: " if runner.where else ""
            shown = (
                f"{where}rollback to {rollback.describe(targets)}: the way back checked, then migrate per app "
                f"({runner.interpreter()} {self.settings.app.manage_py} shell)"
            )
            self.main = self.launch(runner, argv, shown, conceal=self.marker)
            return
        argv = command_argv(self.settings)
        self.main = self.launch(runner, argv, title(self.settings, runner, argv))

    async def settle(self, session: database.Session, opened: tunnel.Tunnel, gate: Gate) -> None:
        """The command has ended, or is stopped now: nothing of it may reach the database any more, and what
        it left on the server is ended, before the lock goes.

        A statement runs on in the server after its client is gone (PostgreSQL notices only when it
        next writes to it), holding its locks: a cancelled run's migration would keep its tables locked
        for the rest of its statement, and a run that took the lock meanwhile would migrate alongside it.
        A process the command left behind (a daemon in a session of its own, ended only with the run)
        could still use a connection it holds, or open one: the gate is closed first.
        """
        gate.close()
        if self.main is not None:
            await self.main.stop()
        await self.end_leftovers(session, opened, gate)

    async def end_leftovers(self, session: database.Session, opened: tunnel.Tunnel, gate: Gate) -> None:
        """End the command's sessions still on the server (its gate closed: none can start after this); once."""
        if gate.target is None or self.leftovers_ended:  # its connections never reached the database; or done
            return
        self.leftovers_ended = True
        if opened.closed():
            self.debug("command: the link is down; whatever the command left busy on the server ends by itself")
            return
        from bastion_action import database  # noqa: PLC0415 - loaded by the pipeline in a thread

        name = self.application_name
        try:
            async with asyncio.timeout(LEFTOVER_SECONDS):
                ended = await session.end_sessions(name, opened.port, LEFTOVER_SECONDS / 2)
        except (database.SessionsUnknown, TimeoutError) as exc:
            why = str(exc) or f"no answer within {LEFTOVER_SECONDS:g} s"
            self.console.warning(
                self.labelled(
                    f"command: its sessions still busy on the server could not be looked for ({why}); a statement it "
                    f"left running keeps its locks until it ends (pg_stat_activity, application_name '{name}')"
                )
            )
            return
        # An idle one was ending anyway (its connection closed): ended without a word; a busy one is news.
        busy = [one for one in ended if one.state != "idle"]
        if not busy:
            self.debug(f"command: none of its sessions ('{name}') was left busy on the server ({len(ended)} idle)")
            return
        described = ", ".join(
            f"pid {one.pid} ({one.state} for {one.seconds:.1f} s{'' if one.gone else ', still exiting'})"
            for one in busy
        )
        self.say(f"command: ended {len(busy)} session(s) it left busy on the server, rolled back: {described}")

    async def follow_up(
        self, runner: Runner, argv: list[str], shown: str, opened: tunnel.Tunnel, conceal: str = ""
    ) -> tuple[int, str]:
        """A second command (the gate is open by now), run to its end: its exit code and output."""
        launched = self.launch(runner, argv, shown, conceal)
        try:
            code = await while_tunnel_up(launched.wait(), opened)
        finally:
            await launched.stop()
        return code, "\n".join(launched.output)

    async def connect(
        self, stack: contextlib.AsyncExitStack, chain: tunnel.Chain, gate: Gate
    ) -> tuple[tunnel.Tunnel, database.Session]:
        from bastion_action import database, tunnel  # noqa: PLC0415 - loaded by the pipeline in a thread

        settings, result, db = self.settings, self.result, self.target.db
        ssh = settings.ssh
        with self.clock.stage_of(Stage.TUNNEL):
            opened = await stack.enter_async_context(tunnel.forward(chain, db.host, db.port))
        result.tunnel_port = self.target.port  # reported once the tunnel behind it exists
        self.debug(
            f"tunnel: the action's own forward on 127.0.0.1:{opened.port}, the command's gate on {self.target.port}"
        )
        if settings.command.read_only and not settings.lock:
            gate.open(opened, db.host, db.port)  # nothing to lock: the command's work overlaps the probe
        hops = "".join(f"{hop} -> " for hop in ssh.jump_hosts)
        self.say(
            f"tunnel: 127.0.0.1:{self.target.port} -> {db.host}:{db.port} via {hops}{ssh.user}@{ssh.host}:{ssh.port} "
            f"({self.clock.seconds(Stage.TUNNEL):.2f} s)"
        )
        with self.clock.stage_of(Stage.PROBE):
            session = await while_tunnel_up(
                stack.enter_async_context(
                    database.session(db, opened.port, ssh.connect_timeout, explain=opened.forward_failure)
                ),
                opened,
            )
            server = await while_tunnel_up(session.describe(), opened)
            if settings.lock and settings.command is not Command.PROBE:
                await while_tunnel_up(session.start_lease(settings.lock_lease), opened)
        result.server = server
        self.say(
            f"probe: PostgreSQL {server.version}, database {server.database} as {server.user}, "
            f"TLS {server.ssl_state}, {server.rtt_ms:.1f} ms round trip"
        )
        return opened, session

    async def lock(self, session: database.Session, opened: tunnel.Tunnel) -> None:
        settings = self.settings
        session.lease.break_stale = settings.lock_break_stale
        with self.clock.stage_of(Stage.LOCK):
            waited = await while_tunnel_up(session.lock(settings.lock_timeout, settings.lock_lease, self.say), opened)
        self.result.lock_wait = waited
        from bastion_action.lock import lock_keys  # noqa: PLC0415 - asyncpg: loaded by the pipeline in a thread

        key1, key2 = lock_keys(self.target.db.name)
        lease = session.lease
        bound = "the server ends it" if lease.server_bound else "PostgreSQL < 14 cannot end it"
        self.say(
            f"lock: pg_advisory_lock({key1}, {key2}) held after {waited:.2f} s, "
            f"as a {lease.seconds:g} s lease ({bound} if the action goes silent)"
        )

    async def command(self, opened: tunnel.Tunnel, session: database.Session, gate: Gate) -> None:
        settings, result, db = self.settings, self.result, self.target.db
        # A read-only command cannot apply anything: no "before" state is needed, and its gate may be open already.
        before = None if settings.command.read_only else await session.snapshot()
        self.launch_main()  # a custom command starts only now, under the lock; a Django one started at once
        assert self.main is not None  # noqa: S101 - every command but probe has a runner
        # From here on the command reaches the database: the lock is held, the "before" state is known.
        gate.open(opened, db.host, db.port)
        self.debug(f"command: the gate is open, {len(self.main.output)} line(s) of output so far")
        with self.clock.stage_of(Stage.COMMAND):
            try:
                result.exit_code = await while_tunnel_up(self.main.wait(), opened)
            finally:  # the summary shows the tail of the user's command, not of follow-ups nor a step's answer
                shown = [line for line in self.main.output if not (self.marker and line.startswith(self.marker))]
                result.output_tail = [self.console.redact(line) for line in shown[-TAIL_LINES:]]
            output = "\n".join(self.main.output)
            self.debug(f"command: exit code {result.exit_code}, {len(self.main.output)} line(s) kept for the results")
            second = self.shared.second
            compared: CommandError | None = None  # compare mode: the image's view failed, or differs
            if second is not None and result.exit_code == 0:
                compared = await self.compare(second, output, opened)
        # The migration outputs come from the runner's view, whatever the image's said.
        found = await self.results(opened, session, before, output) if settings.command.django else None
        if found is not None and settings.show_sql:
            await self.collect_sql(found, opened)
        if compared is not None:
            failure: CommandError | None = compared
            result.exit_code = compared.exit_code or 1
        elif settings.command is Command.ROLLBACK:
            failure = self.rollback_verdict(found, output)
        else:
            failure = outcome.verdict(settings.command, command_argv(settings), result.exit_code, found, output)
        if settings.lint and found is not None and (failure is None or isinstance(failure, PendingMigrationsError)):
            # A risk over fail-on-risk is a failure, which outranks check's pending.
            failure = await self.lint(found, opened, session) or failure
        if isinstance(failure, PendingMigrationsError) or (failure is not None and not result.exit_code):
            result.exit_code = 1
        if failure is not None:
            raise failure

    async def compare(self, second: Runner, on_runner: str, opened: tunnel.Tunnel) -> CommandError | None:
        """Compare mode: the same command in the image; its failure (named as the image's, with its own last
        lines in the summary), or the drift between the two views, or None."""
        settings, result = self.settings, self.result
        argv = command_argv(settings)
        code, in_image = await self.follow_up(second, argv, title(settings, second, argv), opened)
        if code != 0:
            result.output_tail = [self.console.redact(line) for line in in_image.splitlines()[-TAIL_LINES:]]
            failed = outcome.verdict(settings.command, argv, code, None, in_image)
            assert failed is not None  # noqa: S101 - a non-zero exit code is always a failure
            return CommandError(
                f"in the image: {failed.message}",
                hint=failed.hint.replace("The command's", "The image's view's"),
                anchor=failed.anchor,
                exit_code=code,
            )
        result.drift, drifted = outcome.drift(on_runner, in_image)
        return drifted

    async def results(
        self, opened: tunnel.Tunnel, session: database.Session, before: list[tuple[str, str]] | None, output: str
    ) -> outcome.Outcome:
        """Structured results: what the database recorded, what Django printed."""
        settings, result = self.settings, self.result
        after = await session.snapshot()
        if settings.command is Command.ROLLBACK:
            return self.rollback_results(before, after, output)
        if settings.command is Command.MIGRATE and before is not None:
            result.rollback_targets = rollback.from_rows(before, after)
        planned = None
        assert result.exit_code is not None  # noqa: S101 - the command has ended
        if self.shared.runner is not None and outcome.needs_plan(settings.command, result.exit_code, settings.args):
            argv = [settings.app.manage_py, "migrate", "--plan"]
            code, plan = await self.follow_up(self.shared.runner, argv, "what is left: migrate --plan", opened)
            planned = plan if code == 0 else ""
        found = outcome.interpret(settings.command, output, before, after, planned, exit_code=result.exit_code)
        result.applied, result.migrations, result.pending = found.applied, found.migrations, found.pending
        result.faked, result.unapplied = found.faked, found.unapplied
        result.failed_migration = found.failed_migration
        result.migration_seconds = dict(found.seconds)
        result.planned = found.planned
        faked, unapplied = set(found.faked or ()), set(found.unapplied or ())
        for key, seconds in found.seconds.items():
            done = "faked" if key in faked else "unapplied" if key in unapplied else "applied"
            self.debug(f"migration {key} {done} in {seconds:.3f} s")
        if found.planned is not None:
            operations = sum(len(items) for items in found.planned.values())
            self.debug(f"plan: {len(found.planned)} migration(s), {operations} operation(s)")
            for key, items in found.planned.items():
                self.debug(f"plan: {key}: {len(items)} operation(s)")
        return found

    def rollback_results(
        self, before: list[tuple[str, str]] | None, after: list[tuple[str, str]], output: str
    ) -> outcome.Outcome:
        """A rollback's results: its step's answer (the way back, what is left) and the rows it removed."""
        result = self.result
        try:
            self.check = rollback.read(output, self.marker)
        except django_shell.UnreadableError as exc:
            self.debug(f"rollback: its answer could not be read: {exc}")
        check = self.check
        if check is not None:
            result.rollback_plan, result.irreversible = check.plan, check.irreversible
            self.debug(f"rollback: the way back unapplies {len(check.plan)} migration(s): {', '.join(check.plan)}")
        found = outcome.rolled_back(output, before, after, check)
        result.applied, result.faked, result.unapplied = found.applied, found.faked, found.unapplied
        result.migrations, result.pending = found.migrations, found.pending
        result.failed_migration = found.failed_migration
        result.migration_seconds = dict(found.seconds)
        return found

    def rollback_verdict(self, found: outcome.Outcome | None, output: str) -> CommandError | None:
        """The step's refusal (nothing unapplied), else the failure of a migrate it ran, else its unreadable answer."""
        check, exit_code = self.check, self.result.exit_code
        assert exit_code is not None  # noqa: S101 - the command has ended
        if check is not None and check.refused:
            return rollback.refusal(check)
        manage_py = self.settings.app.manage_py
        argv = ["; ".join(f"{manage_py} migrate {app} {name}" for app, name in self.target.db.rollback_targets)]
        failure = outcome.verdict(Command.ROLLBACK, argv, exit_code, found, output)
        if failure is None and check is None:
            return CommandError(
                "rollback: the step's answer could not be read, so what it did is not known",
                hint="The rows it removed are in the summary; run showmigrations to see the state.",
                exit_code=1,
            )
        return failure

    async def lint(
        self, found: outcome.Outcome, opened: tunnel.Tunnel, session: database.Session
    ) -> CommandError | None:
        """The pending migrations' hazards, weighed with their tables' live facts; the failure fail-on-risk makes.

        One more process where the command ran reads each migration's operations and SQL; the action's own
        session reads the tables' size and locks (read only, no lock taken). When linting is impossible,
        the run fails if it was asked to lint or to gate on the risk; otherwise a warning says why.
        """
        settings, result, runner = self.settings, self.result, self.shared.runner
        keys = show_sql.wanted(Command.PLAN, found)
        if runner is None or keys is None:
            return self.lint_impossible("the migration state is unknown")
        facts: list[operations.MigrationFacts] = []
        if keys:
            marker = operations.new_marker()
            argv = operations.argv(settings.app.manage_py, marker, keys)
            shown = f"lint: the operations and SQL of {len(keys)} pending migration(s)"
            try:
                code, output = await self.follow_up(runner, argv, shown, opened, conceal=marker)
                if code != 0:
                    return self.lint_impossible(f"reading the migrations exited with code {code} (see its log)")
                facts = operations.read(output, marker, keys)
            except django_shell.UnreadableError as exc:
                return self.lint_impossible(f"its answer could not be read: {exc}")
        tables = lint.touched_tables(facts)
        table_facts = await while_tunnel_up(session.table_facts(tables), opened) if tables else {}
        report = lint.judge(facts, table_facts, settings.lint_thresholds)
        result.lint = report
        self.debug(f"lint: {len(tables)} table(s) read: {', '.join(tables)}")
        for finding in report.findings:
            level = "notice" if finding.acknowledged else "warning"
            where = self.settings.app.working_directory / finding.file if finding.file else None
            note = " (acknowledged)" if finding.acknowledged else ""
            self.console.annotate(
                level,
                self.labelled(
                    f"{finding.migration}: {finding.operation}: {finding.reason}{note}. "
                    f"Table {finding.table or '-'}: {lint.scale(finding.facts)} ({finding.note}). "
                    f"Safer: {finding.safer}. See {finding.docs}"
                ),
                title=f"bastion-migrate lint: {finding.rule} ({finding.risk.value} risk)",
                file=self.console.repository_path(where) if where is not None else "",
                line=finding.line,
            )
        for unread in report.unread:
            self.console.warning(self.labelled(f"lint: not judged: {unread}"))
        counted = [finding for finding in report.findings if not finding.acknowledged]
        self.say(
            f"lint: {len(keys)} pending migration(s), {len(report.findings)} finding(s) "
            f"({len(report.findings) - len(counted)} acknowledged), risk {report.risk.value}"
        )
        limit = settings.fail_on_risk
        if limit is None or report.risk.rank < limit.rank:
            return None
        over = [finding for finding in counted if finding.risk.rank >= limit.rank]
        named = ", ".join(f"{finding.migration} {finding.rule} on {finding.table or '-'}" for finding in over[:5])
        return CommandError(
            f"lint: risk {report.risk.value} reaches fail-on-risk {limit.value}: {len(over)} finding(s) ({named}"
            + (", ..." if len(over) > 5 else "")  # noqa: PLR2004
            + "); nothing was applied",
            hint="Rewrite the migrations the safer way each finding names (docs/lint.md), or acknowledge a "
            "finding you accept with '# bastion-migrate: ack <rule>' above its operation.",
            anchor="lint-risk",
            exit_code=1,
        )

    def lint_impossible(self, why: str) -> CommandError | None:
        settings = self.settings
        if settings.command is Command.LINT or settings.fail_on_risk is not None:
            return CommandError(
                f"lint: the pending migrations could not be linted: {why}",
                hint="The command's log shows why Django could not describe the migrations.",
                anchor="lint-risk",
                exit_code=1,
            )
        self.console.warning(self.labelled(f"lint: not linted: {why}"))
        return None

    async def collect_sql(self, found: outcome.Outcome, opened: tunnel.Tunnel) -> None:
        """``show-sql``: each pending (plan, check) or applied (migrate) migration's SQL, read with ``sqlmigrate``.

        One more process where the command ran, within the run's timeout and under the lock the command
        held, if any. Its failure is told in the log and leaves ``sql`` unknown; it never fails the run.
        """
        settings, result, runner = self.settings, self.result, self.shared.runner
        keys = show_sql.wanted(settings.command, found)
        if runner is None or keys is None:
            self.debug("show-sql: the migration state is unknown, no SQL to collect")
            return
        if not keys:
            result.sql = {}
            self.debug("show-sql: no migration to collect the SQL of")
            return
        marker = show_sql.new_marker()
        argv = show_sql.argv(settings.app.manage_py, marker, keys)
        shown = f"show-sql: sqlmigrate of {len(keys)} migration(s)"
        try:
            deadline = self.shared.deadline
            async with asyncio.timeout_at(None if deadline is None else deadline - SHOW_SQL_MARGIN_SECONDS):
                code, output = await self.follow_up(runner, argv, shown, opened, conceal=marker)
            collected = show_sql.read(output, marker, keys, self.console.safe_length) if code == 0 else None
        except TimeoutError:
            self.console.warning(
                self.labelled(
                    f"show-sql: no SQL collected: sqlmigrate was still running {SHOW_SQL_MARGIN_SECONDS:g} s before "
                    f"the run's timeout ({self.settings.timeout:g} s), and show-sql never fails the run"
                )
            )
            return
        except (show_sql.UnreadableError, CommandError) as exc:
            why = exc.message if isinstance(exc, CommandError) else str(exc)
            self.console.warning(self.labelled(f"show-sql: no SQL collected: {why}"))
            return
        if collected is None:
            self.console.warning(
                self.labelled(f"show-sql: no SQL collected: sqlmigrate exited with code {code} (see its log)")
            )
            return
        result.sql = {key: self.console.redact(sql) for key, sql in collected.items()}
        self.say(f"show-sql: the SQL of {len(collected)} migration(s) is in the report")
        self.debug(f"show-sql: {show_sql.sizes(result.sql)}")


async def run_database(shared: Shared, target: Target) -> None:
    """Gate, tunnel, probe, lock, command, results for one database; raises the first failure.

    A Django command starts at once (the gate holds its connections); the rest waits for the
    shared SSH connection. Everything this database opened is closed on the way out.
    """
    async with contextlib.AsyncExitStack() as stack:
        sslrootcert = stack.enter_context(cafile.written(target.db.sslrootcert))
        path = _Database(shared, target, target.db.url(target.port, sslrootcert=sslrootcert))
        try:
            if shared.settings.command.django:
                path.launch_main()
            chain = await asyncio.shield(shared.chain)  # one database's end must not cancel the others' connection
            from bastion_action import gates, tunnel  # noqa: PLC0415 - imported by the pipeline (in a thread) by now

            gate = await stack.enter_async_context(gates.gate(target.sock))
            opened, session = await path.connect(stack, chain, gate)
            for runner in (shared.runner, shared.second):
                if runner is not None:
                    await runner.ready()  # the lock is not held while the image is still being pulled
            if path.settings.command is not Command.PROBE:
                if path.settings.lock:
                    await path.lock(session, opened)
                try:
                    await guarded(
                        path.command(opened, session, gate),
                        session.lease,
                        gate,
                        opened,
                        link_verdict=path.settings.ssh.keepalive_interval * (tunnel.KEEPALIVE_COUNT_MAX + 1),
                        leftovers=lambda: path.end_leftovers(session, opened, gate),
                    )
                finally:
                    await aio.to_the_end(path.settle(session, opened, gate))  # before the lock goes
                    await session.unlock()
        finally:
            if path.main is not None:
                await path.main.stop()
    target.result.result = Result.SUCCESS
