# syntax=docker/dockerfile:1
# One image for every process of clazar-dest: web (gunicorn), worker, beat, migrate and the simulator.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=clazar_dest.settings \
    CLAZAR_DATA_DIR=/data

WORKDIR /app

# Dependencies first (only the runtime ones, pinned in pyproject.toml) so code changes reuse this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code runs from /app (settings find templates/ and static/ beside the packages).
COPY manage.py ./
COPY clazar_dest ./clazar_dest
COPY flows ./flows
COPY templates ./templates
COPY static ./static

# Static files are collected at build time with the production storage (hashed, compressed names).
# The secrets here are throwaway build values: the running containers get theirs from the environment.
RUN DEBUG=0 CLAZAR_DATA_DIR=/tmp/build-data \
    SECRET_KEY=collectstatic-only-not-a-secret-0123456789abcdef \
    python manage.py collectstatic --noinput -v 0 \
    && rm -rf /tmp/build-data

# An unprivileged user; /data holds the beat schedule and uploaded files (volumes in docker-compose.yml).
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin clazar \
    && mkdir -p /data/media \
    && chown -R clazar:clazar /data
USER clazar

EXPOSE 8000
CMD ["gunicorn", "clazar_dest.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
