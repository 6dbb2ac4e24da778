from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("hazards", "0004_index_big")]
    operations = [
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY big_code_concurrently_idx ON hazards_big (code)",
            reverse_sql="DROP INDEX CONCURRENTLY big_code_concurrently_idx",
        ),
    ]
