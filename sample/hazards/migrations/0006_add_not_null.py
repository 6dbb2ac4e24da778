from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("hazards", "0005_concurrently_in_atomic")]
    operations = [
        migrations.AddField(model_name="big", name="flag", field=models.IntegerField()),
    ]
