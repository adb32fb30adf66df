# One image for every process of the production stack (web, workers, scheduler).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=mqi_site.settings_production \
    MQI_DATA_DIR=/var/lib/mqi

RUN useradd --system --create-home --home-dir /home/mqi mqi \
 && mkdir -p /var/lib/mqi /srv/mqi && chown mqi /var/lib/mqi /srv/mqi

WORKDIR /app
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/
COPY mqi_site mqi_site
COPY cases cases
COPY gpus gpus
COPY conductor conductor
COPY workers workers
COPY evaluation evaluation
# The locked releases, the same set the tests ran on (bin/lock writes the file).
RUN pip install --no-cache-dir -c requirements/constraints.txt .
COPY manage.py config.yaml ./
COPY hpc_standins hpc_standins

# collectstatic needs settings that import; these build-time values are never used at run time.
RUN DJANGO_SECRET_KEY=build-only-build-only-build-only-build-only-build-only \
    DATABASE_URL=postgres://build@localhost/build REDIS_URL=redis://localhost \
    python manage.py collectstatic --noinput

USER mqi
EXPOSE 8000
CMD ["gunicorn", "mqi_site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
