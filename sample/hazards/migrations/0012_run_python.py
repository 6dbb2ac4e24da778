from django.db import migrations


def double(apps, schema_editor):
    apps.get_model("hazards", "Small").objects.update(amount=2)


class Migration(migrations.Migration):
    dependencies = [("hazards", "0011_foreign_key")]
    operations = [migrations.RunPython(double)]
