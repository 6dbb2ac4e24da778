from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("hazards", "0007_volatile_default")]
    operations = [
        migrations.AlterField(model_name="big", name="amount", field=models.BigIntegerField()),
    ]
