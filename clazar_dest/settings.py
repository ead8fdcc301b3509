"""Settings for clazar-dest, read from the environment with strict parsers (see envparse).

No DATABASE_URL means the embedded default: SQLite in the data folder. No REDIS_URL means Celery over
kombu's filesystem transport in the same folder. SECRET_KEY and the field-encryption keys are generated
once into the data folder when not given.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from clazar_dest import envparse as ep

ENV = os.environ
BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(ENV.get("CLAZAR_DATA_DIR") or BASE_DIR / ".data").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = ep.parse_bool(ENV, "DEBUG", False)
DEMO_MODE = ep.parse_bool(ENV, "DEMO_MODE", False)
HTTPS_ONLY = ep.parse_bool(ENV, "HTTPS_ONLY", not DEBUG)
BEHIND_TLS_PROXY = ep.parse_bool(ENV, "BEHIND_TLS_PROXY", False)

SECRET_KEY = ep.read_secret(ENV, "SECRET_KEY") or ep.generated_secret(
    DATA_DIR, "secret_key", ep.new_secret_key
)
_keys = ep.read_secret(ENV, "FIELD_ENCRYPTION_KEYS") or ep.generated_secret(
    DATA_DIR, "field_encryption_keys", ep.new_fernet_key
)
FIELD_ENCRYPTION_KEYS = ep.parse_fernet_keys(_keys, "FIELD_ENCRYPTION_KEYS")

ALLOWED_HOSTS = ep.parse_list(ENV, "ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = ep.parse_list(ENV, "CSRF_TRUSTED_ORIGINS", [])

# Clazar API bases a credential may point at. The simulator joins only when configured.
CLAZAR_DEFAULT_API_BASE = "https://api.clazar.io"
CLAZAR_SIMULATOR_URL = ep.parse_url(ENV, "CLAZAR_SIMULATOR_URL", schemes=("http", "https"))
CLAZAR_API_BASES = [
    ep.parse_origin(base, "CLAZAR_API_BASES")
    for base in ep.parse_list(ENV, "CLAZAR_API_BASES", [CLAZAR_DEFAULT_API_BASE])
]
if CLAZAR_SIMULATOR_URL:
    CLAZAR_SIMULATOR_URL = ep.parse_origin(CLAZAR_SIMULATOR_URL, "CLAZAR_SIMULATOR_URL")
    CLAZAR_API_BASES.append(CLAZAR_SIMULATOR_URL)
CLAZAR_RATE_LIMIT = ep.parse_int(ENV, "CLAZAR_RATE_LIMIT", 120, minimum=1, maximum=1_000_000)
CLAZAR_CONNECT_TIMEOUT = ep.parse_int(ENV, "CLAZAR_CONNECT_TIMEOUT", 5, minimum=1, maximum=120)
CLAZAR_READ_TIMEOUT = ep.parse_int(ENV, "CLAZAR_READ_TIMEOUT", 30, minimum=1, maximum=600)
# Total seconds one call to Clazar may take, body included: a server trickling bytes never trips the read
# timeout (it is per socket read), this does.
CLAZAR_DEADLINE = ep.parse_int(
    ENV, "CLAZAR_DEADLINE", CLAZAR_CONNECT_TIMEOUT + CLAZAR_READ_TIMEOUT + 5, minimum=1, maximum=900
)

# Salesforce: the simulator's origin (demo and tests) is accepted as a login host and instance URL only
# when configured. PUBLIC_URL fixes the callback URL given to Salesforce (else it follows the request).
SALESFORCE_SIMULATOR_URL = ep.parse_url(ENV, "SALESFORCE_SIMULATOR_URL", schemes=("http", "https"))
if SALESFORCE_SIMULATOR_URL:
    SALESFORCE_SIMULATOR_URL = ep.parse_origin(SALESFORCE_SIMULATOR_URL, "SALESFORCE_SIMULATOR_URL")
PUBLIC_URL = ep.parse_url(ENV, "PUBLIC_URL", schemes=("http", "https"))
if PUBLIC_URL:
    PUBLIC_URL = ep.parse_origin(PUBLIC_URL, "PUBLIC_URL")
SALESFORCE_CONNECT_TIMEOUT = ep.parse_int(ENV, "SALESFORCE_CONNECT_TIMEOUT", 5, minimum=1, maximum=120)
SALESFORCE_READ_TIMEOUT = ep.parse_int(ENV, "SALESFORCE_READ_TIMEOUT", 60, minimum=1, maximum=600)
# A pull stops with a clear message past this many records (protects the database from a runaway filter).
SALESFORCE_PULL_MAX_RECORDS = ep.parse_int(
    ENV, "SALESFORCE_PULL_MAX_RECORDS", 1_000_000, minimum=1, maximum=50_000_000
)

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "axes",
    "flows",
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
    "django_htmx.middleware.HtmxMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "flows.middleware.HtmxMessagesMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "clazar_dest.urls"
WSGI_APPLICATION = "clazar_dest.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "flows.context_processors.app",
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    }
]

_database_url = ep.parse_database_url(ENV)
if _database_url and not _database_url.startswith("sqlite"):
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)}
else:
    _sqlite_file = (
        Path(_database_url[len("sqlite://") :]) if _database_url else DATA_DIR / "clazar-dest.sqlite3"
    )
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _sqlite_file,
            # Workers and web share the file: wait for locks instead of failing, and use the write-ahead
            # log so readers do not block the writer.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": _sqlite_file.with_name("test-" + _sqlite_file.name)},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = ep.parse_url(ENV, "REDIS_URL", schemes=("redis", "rediss"))
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": DATA_DIR / "cache",
        }
    }

# Celery: the database is the queue of record; a message is only a wake-up (DESIGN.md section 6).
BROKER_DIR = DATA_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
else:
    BROKER_DIR.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR),
        "data_folder_out": str(BROKER_DIR),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_SWEEP_SECONDS = ep.parse_int(ENV, "CELERY_SWEEP_SECONDS", 5, minimum=1, maximum=3600)
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "flows.sweep", "schedule": float(CELERY_SWEEP_SECONDS)},
    "salesforce-pulls": {"task": "flows.salesforce_due", "schedule": 60.0},
}

# The delivery engine (flows/delivery.py, DESIGN.md section 6).
# Requests in flight at once per deliver task (threads; the task writes through three writer threads, so it
# holds about four database connections, and keeps one Clazar connection alive per thread).
DELIVERY_THREADS = ep.parse_int(ENV, "DELIVERY_THREADS", 8, minimum=1, maximum=64)
# How long a claimed delivery is held before the sweeper resolves it; longer than one whole call.
DELIVERY_LEASE_SECONDS = ep.parse_int(
    ENV, "DELIVERY_LEASE_SECONDS", CLAZAR_DEADLINE + 30, minimum=CLAZAR_DEADLINE + 1, maximum=86_400
)
# Records planned into deliveries per transaction.
DELIVERY_PLAN_CHUNK = ep.parse_int(ENV, "DELIVERY_PLAN_CHUNK", 1000, minimum=1, maximum=100_000)
# A deliver task hands over (and wakes itself again) after this long, so destinations take turns.
DELIVERY_SLICE_SECONDS = ep.parse_int(ENV, "DELIVERY_SLICE_SECONDS", 60, minimum=1, maximum=3600)
# Share of a credential's rate limit the engine uses: the rest absorbs clock and network jitter.
DELIVERY_RATE_USE_PERCENT = ep.parse_int(ENV, "DELIVERY_RATE_USE_PERCENT", 97, minimum=10, maximum=100)
# Circuit breaker: consecutive server-side failures that auto-pause a destination, and probe interval.
DELIVERY_BREAKER_FAILURES = ep.parse_int(ENV, "DELIVERY_BREAKER_FAILURES", 10, minimum=1, maximum=10_000)
DELIVERY_PROBE_SECONDS = ep.parse_int(ENV, "DELIVERY_PROBE_SECONDS", 60, minimum=1, maximum=86_400)
# Lookups that may fail (Clazar unreachable) before an unknown outcome is handed to a person.
DELIVERY_RECONCILE_TRIES = ep.parse_int(ENV, "DELIVERY_RECONCILE_TRIES", 10, minimum=1, maximum=1000)

# Nexset sources (flows/imports.py, flows/views/hooks.py): upload and webhook limits.
UPLOAD_MAX_BYTES = ep.parse_int(ENV, "UPLOAD_MAX_BYTES", 1024**3, minimum=1024, maximum=100 * 1024**3)
UPLOAD_MAX_ROWS = ep.parse_int(ENV, "UPLOAD_MAX_ROWS", 5_000_000, minimum=1, maximum=1_000_000_000)
# A Nexset with at least this many records gets a record search index of its own on its first record
# search in a history (PostgreSQL; flows/search_index.py).
RECORD_SEARCH_INDEX_MIN = ep.parse_int(ENV, "RECORD_SEARCH_INDEX_MIN", 100_000, minimum=1, maximum=10**12)
UPLOAD_MAX_RECORD_CHARS = ep.parse_int(
    ENV, "UPLOAD_MAX_RECORD_CHARS", 262_144, minimum=1024, maximum=64 * 1024**2
)
WEBHOOK_MAX_BYTES = ep.parse_int(ENV, "WEBHOOK_MAX_BYTES", 1024**2, minimum=1024, maximum=100 * 1024**2)
WEBHOOK_MAX_RECORDS = ep.parse_int(ENV, "WEBHOOK_MAX_RECORDS", 1000, minimum=1, maximum=100_000)
WEBHOOK_TOLERANCE_SECONDS = ep.parse_int(ENV, "WEBHOOK_TOLERANCE_SECONDS", 300, minimum=1, maximum=86_400)
WEBHOOK_SECRET_GRACE_SECONDS = ep.parse_int(
    ENV, "WEBHOOK_SECRET_GRACE_SECONDS", 86_400, minimum=0, maximum=30 * 86_400
)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# Brute-force lockout on login (django-axes): lock the username from that address after 5 failures.
AXES_FAILURE_LIMIT = ep.parse_int(ENV, "LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=100)
AXES_COOLOFF_TIME = ep.parse_int(ENV, "LOGIN_COOLOFF_MINUTES", 15, minimum=1, maximum=10_000) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked.html"
AXES_VERBOSE = False
if BEHIND_TLS_PROXY:
    AXES_IPWARE_PROXY_COUNT = 1
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": DATA_DIR / "media"},
    },
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if HTTPS_ONLY:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = ep.parse_int(ENV, "HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = False
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS = ["security.W021"]  # HSTS preload is a decision for the operator, not a default.

LOG_LEVEL = ep.parse_choice(ENV, "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "flows.logfilters.RedactSecrets"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}

if not SECRET_KEY or len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long.")
