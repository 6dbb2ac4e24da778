"""12 rows in hazards_small, 150,000 in hazards_big, analyzed: the lint's thresholds see them."""
from django.db import migrations

SEED = """
INSERT INTO hazards_small (name, code, amount, legacy) SELECT 's' || g, g, g, '' FROM generate_series(1, 12) g;
INSERT INTO hazards_big (name, code, amount) SELECT 'b' || g, g, g FROM generate_series(1, 150000) g;
INSERT INTO hazards_other (name) SELECT 'o' || g FROM generate_series(1, 3) g;
ANALYZE hazards_small;
ANALYZE hazards_big;
"""
UNSEED = "DELETE FROM hazards_small; DELETE FROM hazards_big; DELETE FROM hazards_other;"


class Migration(migrations.Migration):
    dependencies = [("hazards", "0001_initial")]
    operations = [migrations.RunSQL(SEED, reverse_sql=UNSEED)]
