# One image for the coordinator and the example workers (docker-compose.yml runs both from it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
# A normal (not editable) install of the faultline-jobs distribution: its wheel carries the migrations.
# examples/ stays under /app for `python examples/worker.py`, which imports the installed worker_sdk.
# openssl: deploy/compose/init.sh makes the compose stack's CA and certificates with it.
RUN apt-get update && apt-get install -y --no-install-recommends openssl && rm -rf /var/lib/apt/lists/* \
    && pip install '.[coordinator,fast]' \
    && groupadd --system --gid 10001 faultline \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin faultline

# Numeric, so that Kubernetes' runAsNonRoot can verify it (deploy/k8s).
USER 10001
# gRPC (JobService, WorkerService, reflection, health) and Prometheus metrics.
EXPOSE 50051 9464
CMD ["faultline", "coordinator"]
