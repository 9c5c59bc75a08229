# syntax=docker/dockerfile:1
# Build wheels for the service, its client library and every dependency, then
# install them into a slim runtime image that runs as an unprivileged user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt alembic.ini ./
COPY clients/python clients/python
COPY registry registry
COPY migrations migrations
RUN pip wheel --no-cache-dir -c constraints.txt --wheel-dir /wheels ./clients/python .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REGISTRY_HOST=0.0.0.0 \
    REGISTRY_PORT=8000 \
    REGISTRY_WORKER_PORT=8001
RUN useradd --system --create-home --uid 10001 registry \
    && install -d -m 0700 -o registry -g registry /var/lib/registry/secrets
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER registry
WORKDIR /home/registry
# 8000: the API (`registry serve`); 8001: the worker's /health, /ready and /metrics (`registry worker`).
EXPOSE 8000 8001
# Liveness of either role: the worker (REGISTRY_ROLE=worker) answers on its own port. docker-compose.yml
# gives each service its own check (readiness for the API) and none to the one-shot migrate job.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['REGISTRY_WORKER_PORT'] if os.environ.get('REGISTRY_ROLE') == 'worker' else os.environ['REGISTRY_PORT']; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2)"]
ENTRYPOINT ["registry"]
CMD ["serve"]
