"""A launched command's output as shown and as kept: partial lines, continuations, the still-running line, holding."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Sequence

import pytest

from bastion_action import launch as launch_module
from bastion_action.gha import Console
from bastion_action.launch import Launched, duration, launch
from bastion_action.output import LINE_HEAD
from bastion_action.runners import Output

Step = bytes | str | float  # a chunk to print, or seconds to stay quiet


class FakeRunner:
    """A ``Runner`` whose command prints the chunks of a script, pausing where it says, then exits."""

    where = ""

    def __init__(self, *script: Step, exit_code: int = 0) -> None:
        self.script = script
        self.exit_code = exit_code

    def interpreter(self) -> str:
        return "python"

    async def ready(self) -> None:
        return

    async def run(
        self,
        argv: Sequence[str],
        *,
        database_url: str,
        output: Output,
        application_name: str = "",
    ) -> int:
        del argv, database_url, application_name  # the protocol's; unused here
        for step in self.script:
            if isinstance(step, float):
                await asyncio.sleep(step)
            else:
                output.feed(step)
        return self.exit_code


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch_module, "PARTIAL_LINE_DELAY", 0.05)
    monkeypatch.setattr(launch_module, "HEARTBEAT_FIRST", 0.2)
    monkeypatch.setattr(launch_module, "HEARTBEAT_EVERY", 0.3)


async def run(runner: FakeRunner, *, hold: bool = False) -> tuple[int, list[str], list[str]]:
    stream = io.StringIO()
    launched = launch(Console({}, stream), runner, ["manage.py", "migrate"], "migrate", database_url="x", hold=hold)
    code = await launched.wait()
    return code, stream.getvalue().splitlines(), list(launched.output)


async def test_an_unfinished_line_is_shown_after_a_pause_and_its_rest_as_a_continuation() -> None:
    code, shown, output = await run(
        FakeRunner("Operations to perform:\n", "  Applying orders.0003_big...", 0.15, " OK\n", "done", exit_code=3)
    )
    assert code == 3
    assert shown == ["== migrate", "Operations to perform:", "  Applying orders.0003_big...", "… OK", "done"]
    assert output == ["Operations to perform:", "  Applying orders.0003_big... OK", "done"]


async def test_a_line_completed_without_a_pause_is_shown_once_whole() -> None:
    _, shown, output = await run(FakeRunner(b"  Applying a.0001", b"_initial...", 0.01, b" OK\n"))
    assert shown == ["== migrate", "  Applying a.0001_initial... OK"]
    assert output == ["  Applying a.0001_initial... OK"]


async def test_a_line_growing_in_pauses_is_shown_piece_by_piece() -> None:
    _, shown, output = await run(FakeRunner("progress: .", 0.12, "..", 0.12, ".\r\n"))
    assert shown == ["== migrate", "progress: .", "…..", "…."]
    assert output == ["progress: ...."]


async def test_a_quiet_command_says_it_is_still_running_naming_its_migration() -> None:
    _, shown, _ = await run(FakeRunner("  Applying orders.0003_big...", 0.65, " OK\n", 0.35))
    assert shown[:2] == ["== migrate", "  Applying orders.0003_big..."]
    ok = shown.index("… OK")
    beats = shown[2:ok]  # 0.2 s and 0.5 s into the migration (later on a busy machine, never earlier)
    assert 1 <= len(beats) <= 2, shown
    assert all(re.fullmatch(r"still running: orders\.0003_big \(0 s\)", beat) for beat in beats), beats
    [after] = shown[ok + 1 :]
    assert re.fullmatch(r"still running \(\d s\)", after), shown


async def test_a_migration_printing_its_own_output_is_followed_until_its_ok() -> None:
    _, shown, output = await run(FakeRunner("  Applying audit.0002_hooks...hook says hi\n", 0.3, " OK\n", 0.3))
    assert shown[2].startswith("still running: audit.0002_hooks"), shown
    assert shown[3] == " OK"
    assert shown[4].startswith("still running ("), shown
    assert output == ["  Applying audit.0002_hooks...hook says hi", " OK"]


async def test_held_output_waits_for_the_end_but_the_still_running_line_does_not() -> None:
    _, shown, output = await run(FakeRunner("one\n", "two", 0.3), hold=True)
    assert re.fullmatch(r"migrate: still running \(0 s\)", shown[0]), shown
    assert shown[1:] == ["== migrate", "one", "two"]
    assert output == ["one", "two"]


async def test_held_output_is_bounded_and_says_what_it_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch_module, "HELD_LINES", 4)
    lines = "".join(f"line {number}\n" for number in range(1000))
    _, shown, output = await run(FakeRunner(lines), hold=True)
    assert shown == ["== migrate", "line 0", "line 1", shown[3], "line 998", "line 999"]
    assert shown[3].startswith("… [996 lines not shown")
    assert len(output) == 1000


async def test_the_last_line_is_kept_whole_even_when_it_was_shown_in_part() -> None:
    _, shown, output = await run(FakeRunner("Traceback: ", 0.12, "boom", exit_code=1))
    assert shown == ["== migrate", "Traceback: ", "…boom"]
    assert output == ["Traceback: boom"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (59.9, "59 s"), (130, "2 min 10 s"), (3600 + 300 + 7, "1 h 5 min")],
)
def test_durations_read_as_a_person_would_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


async def test_a_line_cut_short_never_ends_inside_a_secret() -> None:
    out = io.StringIO()
    console = Console({}, stream=out)
    secret = "Sup3r-Secret-Value"
    console.mask([secret])
    launched = Launched(console, "cmd", hold=False)
    launched.go_live()
    # The line's kept head ends with the first half of the secret; the rest of the line is dropped.
    line = "x" * (LINE_HEAD - 9) + secret + "y" * 100
    launched.feed(line + "\n")
    [kept] = list(launched.output)
    assert kept == "x" * (LINE_HEAD - 9) + f" … [{len(secret) + 100:,} more characters of this line not shown]"
    assert "Sup3r" not in out.getvalue()
