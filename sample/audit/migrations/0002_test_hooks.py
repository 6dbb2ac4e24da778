"""Test hooks for bastion-migrate's own test suite.

This migration exists so the action's tests can make a migration run slow or
fail on demand, without a second sample project:

- ``SAMPLE_MIGRATION_SLEEP=N``: sleep N seconds *in the database*
  (``SELECT pg_sleep(N)``), i.e. a long-running statement through the tunnel;
- ``SAMPLE_MIGRATION_FAIL=1``: raise RuntimeError, i.e. a failing migration;
- ``SAMPLE_MIGRATION_PRINT=TEXT`` / ``SAMPLE_MIGRATION_PRINT_STDERR=TEXT``: write TEXT
  to stdout / stderr, ``\\n`` and ``\\r`` written as newline and carriage return (an
  environment line cannot hold them), ``::`` as it is, i.e. a migration whose output
  is hostile;
- ``SAMPLE_MIGRATION_LINE_BYTES=N``: print one line of N bytes between two DDL
  statements, i.e. a migration with a huge output line half-way;
- ``SAMPLE_ROLLBACK_SLEEP=N``: when the migration is unapplied, sleep N seconds in the
  database, i.e. a long-running rollback.

With none of these set it does nothing. It depends on the other apps' last
migrations so that it is always the last one in the plan.
"""
import os
import sys

from django.db import migrations


def run_test_hooks(apps, schema_editor):
    for name, stream in (("SAMPLE_MIGRATION_PRINT", sys.stdout), ("SAMPLE_MIGRATION_PRINT_STDERR", sys.stderr)):
        text = os.environ.get(name)
        if text:
            stream.write(text.replace("\\n", "\n").replace("\\r", "\r"))
            stream.flush()
    line_bytes = os.environ.get("SAMPLE_MIGRATION_LINE_BYTES")
    if line_bytes:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS audit_hook_before_line (id integer)")
            sys.stdout.write("x" * int(line_bytes) + "\n")
            sys.stdout.flush()
            cursor.execute("CREATE TABLE IF NOT EXISTS audit_hook_after_line (id integer)")
    seconds = os.environ.get("SAMPLE_MIGRATION_SLEEP")
    if seconds:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(%s)", [float(seconds)])
    if os.environ.get("SAMPLE_MIGRATION_FAIL"):
        raise RuntimeError("audit.0002_test_hooks: failing on purpose (SAMPLE_MIGRATION_FAIL)")


def run_rollback_hooks(apps, schema_editor):
    seconds = os.environ.get("SAMPLE_ROLLBACK_SLEEP")
    if seconds:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(%s)", [float(seconds)])


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0001_initial"),
        ("catalog", "0002_product_sku"),
        ("orders", "0002_seed_statuses"),
    ]

    operations = [
        migrations.RunPython(run_test_hooks, run_rollback_hooks),
    ]
