"""A password that every printer escapes differently: none of its printed forms reaches any of the run's output."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

import pytest
from support import admin_sql, unique

# Backslash, both quotes, an escape-looking percent sequence, Latin-1 and beyond, a space.
HOSTILE_PASSWORD = "Pw\\d'q\"x%41é€ 9"

# The command prints the DSN and the password in every form Python and JSON give, then fails:
# a failed run also copies the output's tail into the step summary.
SCRIPT = """
import json, os, sys, urllib.parse as u
url = os.environ['DATABASE_URL']
pw = u.unquote(u.urlsplit(url).password)
for label, text in [('raw', pw), ('url', url), ('dict', {'password': pw, 'q': "'" + '"'})]:
    print('form', label, text, repr(text), ascii(text), json.dumps(text), json.dumps(text, ensure_ascii=False))
print('form repr-both-quotes', repr("'" + pw + '"'), repr("'" + pw), repr(pw.encode()))
print('form stderr', repr(pw), json.dumps(pw), file=sys.stderr)
sys.exit(1)
"""


@pytest.fixture
def hostile_db(lab: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """A role of its own with the hostile password, owning a fresh database; both dropped afterwards."""
    role, database = unique("hostile"), unique("it")
    literal = HOSTILE_PASSWORD.replace("'", "''")
    admin_sql(lab, f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{literal}'")
    try:
        admin_sql(lab, f'CREATE DATABASE "{database}" OWNER "{role}"')
        yield role, database
    finally:
        admin_sql(lab, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin_sql(lab, f'DROP ROLE IF EXISTS "{role}"')


def test_no_printed_form_of_a_hostile_password_leaks(action, base_inputs, lab, hostile_db) -> None:
    role, database = hostile_db
    inputs = {
        **base_inputs,
        "db-user": role,
        "db-name": database,
        "db-password": HOSTILE_PASSWORD,
        "command": "custom",
        "args": f"{lab['runner_python']} -c {shlex.quote(SCRIPT)}",
    }
    run = action(inputs)
    assert run.outputs["exit-code"] == "1", run.explain()
    assert run.outputs["result"] == "failure", run.explain()
    assert "form repr-both-quotes" in run.stdout, "the command ran and printed"
    assert "form stderr" in run.stdout + run.stderr
    assert "form dict" in run.summary, "the failed run's summary has the output's tail"
    assert not run.leaks([HOSTILE_PASSWORD]), run.explain()
