"""Production settings: the base settings plus what ``manage.py check --deploy`` asks for.

Use with ``DJANGO_SETTINGS_MODULE=mqi_site.settings_production``.  Refuses to start without
``DJANGO_SECRET_KEY`` (or ``DJANGO_SECRET_KEY_FILE``), ``DATABASE_URL`` and ``REDIS_URL``.
TLS is expected to end at a reverse proxy that sets ``X-Forwarded-Proto``.
"""

from django.core.exceptions import ImproperlyConfigured

from mqi_site.env import env_bool, env_str
from mqi_site.settings import *  # noqa: F403
from mqi_site.settings import DATABASES, REDIS_URL

DEBUG = False

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY or len(SECRET_KEY) < 50:
    raise ImproperlyConfigured(
        "set DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) to 50+ random characters, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(64))'"
    )
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    raise ImproperlyConfigured("production needs DATABASE_URL (PostgreSQL)")
if not REDIS_URL:
    raise ImproperlyConfigured("production needs REDIS_URL")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("MQI_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # container health checks speak plain HTTP
SECURE_HSTS_SECONDS = 31_536_000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_AGE = 8 * 3600  # one working day
CSRF_TRUSTED_ORIGINS = [o for o in (env_str("DJANGO_CSRF_TRUSTED_ORIGINS") or "").split(",") if o]

STATIC_ROOT = DATA_DIR / "static"  # noqa: F405
WHITENOISE_USE_FINDERS = False
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
