from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("hazards", "0010_check_constraint")]
    operations = [
        migrations.RunSQL(
            "ALTER TABLE hazards_big ADD CONSTRAINT big_code_fk FOREIGN KEY (code) REFERENCES hazards_other (id)",
            reverse_sql="ALTER TABLE hazards_big DROP CONSTRAINT big_code_fk",
        ),
    ]
