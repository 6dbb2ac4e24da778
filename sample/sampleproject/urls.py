"""The sample project serves nothing: it exists to be migrated."""
urlpatterns = []
