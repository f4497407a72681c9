# One image for the coordinator and the example workers (docker-compose.yml runs both from it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
# Editable, so that the installed packages are the files under /app: the coordinator finds migrations/
# beside them and `python examples/worker.py` imports the same worker_sdk as the coordinator's image.
RUN pip install -e '.[coordinator,fast]' \
    && useradd --system --home-dir /app --shell /usr/sbin/nologin faultline

USER faultline
# gRPC (JobService, WorkerService, reflection, health) and Prometheus metrics.
EXPOSE 50051 9464
CMD ["faultline", "coordinator"]
