from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("hazards", "0016_rename")]
    operations = [
        migrations.AddIndex(model_name="small", index=models.Index(fields=["code"], name="small_code_idx")),
        # bastion-migrate: ack index-not-concurrent -- built at night, with the table's writers stopped
        migrations.AddIndex(model_name="big", index=models.Index(fields=["code"], name="big_code_idx")),
    ]
