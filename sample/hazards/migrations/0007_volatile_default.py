from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("hazards", "0006_add_not_null")]
    operations = [
        migrations.RunSQL(
            "ALTER TABLE hazards_big ADD COLUMN stamp timestamp with time zone DEFAULT clock_timestamp() NOT NULL",
            reverse_sql="ALTER TABLE hazards_big DROP COLUMN stamp",
            state_operations=[migrations.AddField(model_name="big", name="stamp", field=models.DateTimeField())],
        ),
    ]
