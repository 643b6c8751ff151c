# syntax=docker/dockerfile:1.7
# Embedding server image. One file, two variants:
#   docker build -f docker/server.Dockerfile --build-arg VARIANT=cpu|gpu .
# Versions come only from pyproject.toml: the image installs `.[${VARIANT}]`, the same
# project + extra that `make setup` installs (`.[cpu,dev]`), so nothing is pinned twice.
ARG PYTHON_IMAGE=python:3.11-slim
ARG VARIANT=cpu

# cpu: torch's CPU-only wheels; the pin still comes from pyproject.
FROM ${PYTHON_IMAGE} AS index-cpu
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

# gpu: PyPI's Linux torch wheels bundle CUDA; the driver comes from the container toolkit.
FROM ${PYTHON_IMAGE} AS index-gpu

# DL3006 (untagged image) misreads a stage name chosen by a build arg as an image.
# hadolint ignore=DL3006
FROM index-${VARIANT} AS builder
ARG VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer/ trainer/
COPY server/ server/
# DL3013 (pin versions) is ignored on purpose: the pins live in pyproject.toml.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[${VARIANT}]"

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="moco-matryoshka-server" \
      org.opencontainers.image.description="MoCo-Matryoshka embedding server (${VARIANT})"
RUN groupadd --system --gid 10001 moco \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home moco
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    MOCO_HOST=0.0.0.0 \
    MOCO_PORT=8000
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MOCO_PORT', '8000') + '/healthz', timeout=4)"]
# Settings come from MOCO_* variables (checkpoint, index dir, API key, read-only).
ENTRYPOINT ["python", "-m", "server"]
