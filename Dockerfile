# syntax=docker/dockerfile:1
# Multi-stage build: wheels are built in a full image, the runtime is slim and non-root.
# (No Docker engine runs on the development machines; this file is linted with hadolint.)

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY storage ./storage
COPY config ./config
COPY gateway ./gateway
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile . \
    && /opt/venv/bin/python -m compileall -q /opt/venv

FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HJ212_LISTEN__HOST=0.0.0.0 \
    HJ212_STORAGE__SQLITE_PATH=/data/hj212.sqlite3
RUN groupadd --system --gid 10212 hj212 \
    && useradd --system --uid 10212 --gid hj212 --home-dir /data --create-home hj212
COPY --from=build /opt/venv /opt/venv
USER 10212:10212
WORKDIR /data
EXPOSE 2121 9212
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9212/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["hj212-gateway"]
CMD ["serve"]
