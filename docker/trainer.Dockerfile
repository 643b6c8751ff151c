# syntax=docker/dockerfile:1.7
# Trainer image: training, evaluation and index building. One file, two variants:
#   docker build -f docker/trainer.Dockerfile --build-arg VARIANT=cpu|gpu .
# Versions come only from pyproject.toml: the image installs `.[${VARIANT},train]`, extras
# of the same project `make setup` installs, so nothing is pinned twice. Build arguments:
#   PYTHON_IMAGE     base with Python 3.11 (docker/debian-python-base.sh makes one offline)
#   TORCH_INDEX_URL  auto | empty (PyPI only) | URL, see docker/pip-install.sh
# and the optional secret `pip-ca` (a CA bundle for pip behind a TLS-intercepting proxy).
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
# Dependencies first, from pyproject alone (empty files stand in for the code and README), so a
# code change reuses this layer instead of downloading torch again.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca,required=false \
    mkdir core index trainer && touch README.md core/__init__.py index/__init__.py trainer/__init__.py \
    && pip-install ".[${VARIANT},train]" \
    && rm -r README.md core index trainer
COPY README.md ./
COPY core/ core/
COPY index/ index/
COPY trainer/ trainer/
# The code alone, into its own folder: the runtime copies it as a small layer of its own,
# so a code change does not copy the venv again; the venv drops the stand-in packages.
# (The build backend comes from the index, hence pip-install.)
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca,required=false \
    pip uninstall --yes --quiet moco-matryoshka \
    && pip-install --no-deps --target /opt/moco .

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="moco-matryoshka-trainer" \
      org.opencontainers.image.description="MoCo v2 + Matryoshka trainer (${VARIANT})"
RUN groupadd --system --gid 10001 moco \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home moco
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/moco /opt/moco
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/moco \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HOME=/data/hf
WORKDIR /tmp
USER 10001:10001
# trainer.distributed.torchrun is torchrun (same flags) as PID 1: SIGTERM from the kubelet reaches it,
# it forwards it to the workers, which save a checkpoint; it then exits 143 with one line
# (docs/KUBERNETES.md). Evaluation and index building override the entrypoint.
ENTRYPOINT ["python", "-m", "trainer.distributed.torchrun"]
CMD ["--standalone", "--nproc-per-node=1", "-m", "trainer.train"]
