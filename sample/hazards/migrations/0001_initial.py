from django.db import migrations, models


def fields():
    return [
        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
        ("name", models.CharField(max_length=20)),
        ("code", models.IntegerField(null=True)),
        ("amount", models.IntegerField()),
    ]


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(name="Other", fields=fields()[:2]),
        migrations.CreateModel(name="Small", fields=[*fields(), ("legacy", models.TextField(default=""))]),
        migrations.CreateModel(name="Big", fields=fields()),
        migrations.CreateModel(name="Retired", fields=fields()[:2]),
    ]
