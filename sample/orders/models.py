from django.db import models


class Status(models.Model):
    code = models.CharField(max_length=20, unique=True)
    label = models.CharField(max_length=100)

    def __str__(self):
        return self.code


class Order(models.Model):
    product = models.ForeignKey("catalog.Product", on_delete=models.PROTECT, related_name="orders")
    status = models.ForeignKey(Status, on_delete=models.PROTECT, related_name="orders")
    quantity = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
