from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("hazards", "0009_set_not_null")]
    operations = [
        migrations.AddConstraint(
            model_name="big",
            constraint=models.CheckConstraint(check=models.Q(amount__gte=0), name="big_amount_gte_0"),
        ),
    ]
