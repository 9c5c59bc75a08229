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
    REGISTRY_PORT=8000
RUN useradd --system --create-home --uid 10001 registry
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER registry
WORKDIR /home/registry
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["registry"]
CMD ["serve"]
