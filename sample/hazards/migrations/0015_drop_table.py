from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("hazards", "0014_drop_column")]
    operations = [migrations.DeleteModel(name="Retired")]
