"""An optional app (SAMPLE_EXTRA_APPS=hazards) for the lint: a small and a big table, one pending migration per hazard.

0002 seeds ``hazards_small`` with 12 rows and ``hazards_big`` with 150,000 (then ANALYZE, so
pg_class's estimate is right); every later migration is a PostgreSQL lock or rewrite hazard,
to be linted, never applied.
"""
from django.db import models


class Other(models.Model):
    name = models.CharField(max_length=20)


class Small(models.Model):
    title = models.CharField(max_length=20, db_index=True)
    code = models.IntegerField(null=True)
    amount = models.IntegerField()


class Big(models.Model):
    name = models.CharField(max_length=20, db_index=True)
    code = models.IntegerField(db_index=True)
    amount = models.BigIntegerField()
    flag = models.IntegerField()
    stamp = models.DateTimeField()

    class Meta:
        constraints = [models.CheckConstraint(check=models.Q(amount__gte=0), name="big_amount_gte_0")]
