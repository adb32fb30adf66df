"""Settings for MQI Communicator, all driven by the environment.

With no environment set this is the *embedded* default: a SQLite file under ``MQI_DATA_DIR``,
Dramatiq's in-memory (stub) broker and the ``config.yaml`` next to ``manage.py``.

``DATABASE_URL``  e.g. ``postgres://mqi@127.0.0.1:5432/mqi``   (unset: SQLite file)
``REDIS_URL``     e.g. ``redis://127.0.0.1:6379/0``            (unset: in-memory broker)
``MQI_CONFIG``    path of the workflow/host configuration        (default ``./config.yaml``)
``MQI_DATA_DIR``  where the SQLite file and local results live   (default ``./var``)
``DJANGO_SECRET_KEY`` / ``DJANGO_DEBUG`` / ``DJANGO_ALLOWED_HOSTS``
"""

from pathlib import Path

import dj_database_url

from mqi_site.env import env_bool, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("MQI_DATA_DIR", str(BASE_DIR / "var"))).resolve()
MQI_CONFIG = Path(env_str("MQI_CONFIG", str(BASE_DIR / "config.yaml"))).resolve()

DEBUG = env_bool("DJANGO_DEBUG", default=False)
# The embedded default must run from a clean clone, so it falls back to a key that is
# obviously not secret; production settings refuse to start without a real one.
SECRET_KEY = env_str("DJANGO_SECRET_KEY") or "embedded-insecure-key-set-DJANGO_SECRET_KEY"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_dramatiq",
    "mqi_site",
    "cases",
    "gpus",
    "conductor",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mqi_site.urls"
WSGI_APPLICATION = "mqi_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "mqi_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = env_str("DATABASE_URL")
if _database_url:
    # A worker thread keeps its connection between messages (DbConnectionsMiddleware closes
    # it only once older than CONN_MAX_AGE or after an error).  After a database restart that
    # connection is dead: the health check (one "SELECT 1" at a message's first query) finds
    # out and reconnects, instead of the message failing on it.
    DATABASES = {
        "default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)
    }
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "mqi.sqlite3",
            # Worker threads share the file: take the write lock at BEGIN so two
            # transactions never both read-then-write the same GPU row, and wait
            # for the lock instead of failing fast.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Dose pictures drawn for the pages (cases/results.py): files under the data directory,
# at most MAX_ENTRIES of them (Django culls the oldest third beyond that).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "pictures": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": DATA_DIR / "picture-cache",
        "TIMEOUT": None,
        "OPTIONS": {"MAX_ENTRIES": 3000},
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("MQI_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
# The admin's date and time formats (mqi_site/formats/en): one format everywhere.
FORMAT_MODULE_PATH = ["mqi_site.formats"]

STATIC_URL = "static/"
# Served straight from the apps (no collectstatic for the embedded run); production
# collects them into STATIC_ROOT and serves compressed copies (settings_production).
WHITENOISE_USE_FINDERS = True
LOGIN_URL = "admin:login"

# --- Mail (failure notifications) --------------------------------------------------------
EMAIL_BACKEND = env_str("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = int(env_str("EMAIL_PORT", "25"))
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS")
EMAIL_TIMEOUT = 20
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "mqi-communicator@localhost")

# --- Dramatiq -------------------------------------------------------------------------
# DB-connection hygiene first so every later hook sees a usable connection; then the
# policies.  Actor modules are named ``actors.py`` (not ``tasks.py``).
DRAMATIQ_MIDDLEWARE = [
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.ShutdownNotifications",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    "dramatiq.middleware.CurrentMessage",
    "mqi_site.logcontext.CaseLogContext",
]
# Message metrics (enqueued, processed, retried, durations per actor) from Dramatiq's own
# Prometheus middleware: each `rundramatiq` serves them on dramatiq_prom_host:dramatiq_prom_port
# (default 0.0.0.0:9191).  Opt-in, since two worker processes on one host need two ports.
if env_bool("MQI_PROMETHEUS"):
    DRAMATIQ_MIDDLEWARE.append("dramatiq.middleware.Prometheus")
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "OPTIONS": {"url": REDIS_URL},
        "MIDDLEWARE": DRAMATIQ_MIDDLEWARE,
    }
else:
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.stub.StubBroker",
        "OPTIONS": {},
        "MIDDLEWARE": DRAMATIQ_MIDDLEWARE,
    }
DRAMATIQ_AUTODISCOVER_MODULES = ("actors",)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"case": {"()": "mqi_site.logcontext.CaseContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s%(case_context)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["case"]}
    },
    "root": {"handlers": ["console"], "level": env_str("MQI_LOG_LEVEL", "INFO")},
    "loggers": {
        "paramiko": {"level": "WARNING"},
        "dramatiq": {"level": "WARNING"},
        # "Running job ..." / "... executed successfully" for every trigger, several a
        # second: an idle system would log nothing else
        "apscheduler": {"level": "WARNING"},
        # runmqi --web: one line per request, and an open case page asks every few
        # seconds; 4xx and 5xx answers are still logged (at WARNING and ERROR)
        "django.server": {"level": "WARNING"},
        "django.db.backends": {"level": "WARNING"},
    },
}
