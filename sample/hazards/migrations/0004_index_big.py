from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("hazards", "0003_index_small")]
    operations = [
        migrations.AddIndex(model_name="big", index=models.Index(fields=["name"], name="big_name_idx")),
    ]
