"""Settings of the bastion-migrate sample project.

Works unchanged on Django 3.2 (Debian bookworm, inside the image), 4.2 and 5.x.
Everything secret or site-specific comes from the environment:

- ``SECRET_KEY`` (required)
- ``DATABASE_URL`` (required), e.g.
  ``postgresql://migrator:p%40ss@10.231.2.2:5432/app?sslmode=require`` or
  ``postgresql://migrator:p%40ss@db.example:40123/app?sslmode=verify-full&hostaddr=127.0.0.1&sslrootcert=/tmp/ca.crt``

The URL is parsed by hand (no dj-database-url: Debian's 0.5.0 maps
``postgres://`` to an engine name Django 3 removed).
"""
import os
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

POSTGRES_SCHEMES = ("postgres", "postgresql")


def parse_database_url(url):
    """Turn ``postgres[ql]://user:pass@host:port/name?sslmode=...`` into a
    Django DATABASES entry. User and password are percent-decoded; every
    query parameter is a libpq connection keyword (``sslmode``, ``hostaddr``,
    ``sslrootcert``...) and goes to OPTIONS, as dj-database-url does: libpq
    then checks the certificate against the URL's host while connecting to
    ``hostaddr``.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured("DATABASE_URL is not a valid URL: %s" % exc)
    if parts.scheme not in POSTGRES_SCHEMES:
        raise ImproperlyConfigured(
            "DATABASE_URL scheme must be one of %s, got %r"
            % (", ".join(POSTGRES_SCHEMES), parts.scheme)
        )
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path[1:] if parts.path.startswith("/") else parts.path),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(port) if port is not None else "",
        "OPTIONS": options,
    }


def _required_env(name):
    value = os.environ.get(name)
    if not value:
        raise ImproperlyConfigured("The %s environment variable is required." % name)
    return value


SECRET_KEY = _required_env("SECRET_KEY")
DATABASES = {"default": parse_database_url(_required_env("DATABASE_URL"))}

DEBUG = False
ALLOWED_HOSTS = []

# Only the project's own apps: no django.contrib migrations, so the list of
# migrations is identical on every supported Django version.
INSTALLED_APPS = [
    "catalog",
    "orders",
    "audit",
]
# Optional apps for particular tests, off unless named (comma-separated): ``ledger`` (a history with a
# migration that cannot be undone), ``hazards`` (a small and a big table, one pending migration per lint rule).
INSTALLED_APPS += [name.strip() for name in os.environ.get("SAMPLE_EXTRA_APPS", "").split(",") if name.strip()]
MIDDLEWARE = []
TEMPLATES = []
ROOT_URLCONF = "sampleproject.urls"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
