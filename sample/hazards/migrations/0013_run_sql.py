from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("hazards", "0012_run_python")]
    operations = [migrations.RunSQL("UPDATE hazards_small SET amount = amount + 1")]
