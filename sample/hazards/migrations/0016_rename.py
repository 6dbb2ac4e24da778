from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("hazards", "0015_drop_table")]
    operations = [migrations.RenameField(model_name="small", old_name="name", new_name="title")]
