from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("hazards", "0013_run_sql")]
    operations = [migrations.RemoveField(model_name="small", name="legacy")]
