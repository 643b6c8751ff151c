# syntax=docker/dockerfile:1.7
# Trainer image (training, evaluation, index building). One file, two variants:
#   docker build -f docker/trainer.Dockerfile --build-arg VARIANT=cpu|gpu .
# Versions come only from pyproject.toml: the image installs `.[${VARIANT}]`, the same
# project + extra that `make setup` installs (`.[cpu,dev]`), so nothing is pinned twice.
ARG PYTHON_IMAGE=python:3.11-slim
ARG VARIANT=cpu

# cpu: torch's CPU-only wheels (no 3 GB of CUDA libraries); the pin still comes from
# pyproject, the index only decides which build of that version pip finds.
FROM ${PYTHON_IMAGE} AS index-cpu
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

# gpu: PyPI's Linux torch wheels bundle CUDA as nvidia-* wheels; the host driver comes
# in through the NVIDIA container toolkit, so no CUDA base image is needed.
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
LABEL org.opencontainers.image.title="moco-matryoshka-trainer" \
      org.opencontainers.image.description="MoCo v2 + Matryoshka trainer (${VARIANT})"
RUN groupadd --system --gid 10001 moco \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home moco
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HOME=/data/hf
WORKDIR /tmp
USER 10001:10001
# torchrun is PID 1, so SIGTERM from the kubelet reaches it and it forwards it to the
# workers, which save a checkpoint and exit 0. Evaluation overrides the entrypoint.
ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc-per-node=1", "-m", "trainer.train"]
