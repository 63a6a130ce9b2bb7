# A QFLARE edge node: trains on its shard and uploads sealed updates (torch on CPU).
#
# The base image is a build argument (the official Python image by default; make compose-test builds one
# from Debian's packages). Build-time pip settings come only through BuildKit: an optional secret
# `pip_conf` (a pip.conf; with `pip_cert`, a CA bundle it may name as /run/secrets/pip_cert) and the
# docker/wheels folder bind-mounted as /wheels; neither is copied into any layer.
#   DOCKER_BUILDKIT=1 docker build -f docker/edge.Dockerfile -t qflare-edge .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ -f /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
    && python3 -m venv /opt/venv \
    && pip install --no-cache-dir --find-links /wheels . \
    && useradd --create-home --uid 10001 qflare && mkdir -p /state /config && chown qflare /state
# after the install, so that a changed entrypoint script does not re-run pip
COPY docker/*-entrypoint.sh ./docker/
USER qflare

ENTRYPOINT ["/app/docker/edge-entrypoint.sh"]
