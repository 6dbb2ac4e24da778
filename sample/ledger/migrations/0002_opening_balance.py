"""A data migration with no reverse: Django cannot unapply it (IrreversibleError)."""
from django.db import migrations


def opening_balance(apps, schema_editor):
    apps.get_model("ledger", "Entry").objects.create(amount=100)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]
    operations = [migrations.RunPython(opening_balance)]
