from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("ledger", "0002_opening_balance")]
    operations = [
        migrations.AddField(model_name="entry", name="note", field=models.CharField(default="", max_length=100)),
    ]
