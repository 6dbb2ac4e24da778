from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("hazards", "0002_seed")]
    operations = [
        migrations.AddIndex(model_name="small", index=models.Index(fields=["name"], name="small_name_idx")),
    ]
