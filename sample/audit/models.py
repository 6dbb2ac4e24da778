from django.db import models


class AuditEvent(models.Model):
    kind = models.CharField(max_length=50)
    message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
