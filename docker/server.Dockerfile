# syntax=docker/dockerfile:1.7
# Embedding server image. One file, two variants:
#   docker build -f docker/server.Dockerfile --build-arg VARIANT=cpu|gpu .
# Versions come only from pyproject.toml: the image installs `.[${VARIANT},serve]`, the
# serving extras of the project `make setup` installs; no training-only packages
# (datasets, pyarrow, tensorboard, matplotlib). Build arguments and the `pip-ca` secret
# as in docker/trainer.Dockerfile.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG VARIANT=cpu
ARG TORCH_INDEX_URL=auto
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/pip-install.sh /usr/local/bin/pip-install
COPY pyproject.toml ./
# Dependencies first (empty files stand in for the code and README): code and doc changes
# reuse the layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca,required=false \
    mkdir core index server && touch README.md core/__init__.py index/__init__.py server/__init__.py \
    && pip-install ".[${VARIANT},serve]" \
    && rm -r README.md core index server
COPY README.md ./
# The server image holds the shared contract, the index library and the server: no training code.
COPY core/ core/
COPY index/ index/
COPY server/ server/
# The code alone, into its own folder: the runtime copies it as a small layer of its own,
# so a code change does not copy the venv again; the venv drops the stand-in packages.
# (The build backend comes from the index, hence pip-install.)
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca,required=false \
    pip uninstall --yes --quiet moco-matryoshka \
    && pip-install --no-deps --target /opt/moco .

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="moco-matryoshka-server" \
      org.opencontainers.image.description="MoCo-Matryoshka embedding server (${VARIANT})"
RUN groupadd --system --gid 10001 moco \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home moco
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/moco /opt/moco
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/moco \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MOCO_HOST=0.0.0.0 \
    MOCO_PORT=8000
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
# For `docker run` only: Docker-format builds keep it, OCI-format builds (podman's default)
# drop it, and Kubernetes ignores it. The Deployment's probes (/healthz, /readyz) are the
# authoritative health checks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MOCO_PORT', '8000') + '/healthz', timeout=4)"]
# Settings come from MOCO_* variables (checkpoint, index dir, API key, read-only).
ENTRYPOINT ["python", "-m", "server"]
