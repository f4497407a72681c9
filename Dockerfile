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
RUN pip install '.[coordinator,fast]' \
    && useradd --system --home-dir /app --shell /usr/sbin/nologin faultline

USER faultline
# gRPC (JobService, WorkerService, reflection, health) and Prometheus metrics.
EXPOSE 50051 9464
CMD ["faultline", "coordinator"]
