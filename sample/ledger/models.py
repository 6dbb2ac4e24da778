"""An optional app (SAMPLE_EXTRA_APPS=ledger) whose history holds a migration that cannot be undone."""
from django.db import models


class Entry(models.Model):
    amount = models.IntegerField()
    note = models.CharField(max_length=100, default="")
