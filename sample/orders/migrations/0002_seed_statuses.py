"""Data migration: the order statuses every installation starts with."""
from django.db import migrations

STATUSES = [
    ("new", "New"),
    ("paid", "Paid"),
    ("shipped", "Shipped"),
    ("cancelled", "Cancelled"),
]


def seed_statuses(apps, schema_editor):
    Status = apps.get_model("orders", "Status")
    db = schema_editor.connection.alias
    for code, label in STATUSES:
        Status.objects.using(db).update_or_create(code=code, defaults={"label": label})


def unseed_statuses(apps, schema_editor):
    Status = apps.get_model("orders", "Status")
    db = schema_editor.connection.alias
    Status.objects.using(db).filter(code__in=[code for code, _ in STATUSES]).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("orders", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(seed_statuses, unseed_statuses),
    ]
