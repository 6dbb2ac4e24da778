from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("hazards", "0008_type_change")]
    operations = [
        migrations.AlterField(model_name="big", name="code", field=models.IntegerField()),
    ]
