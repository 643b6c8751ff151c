#!/usr/bin/env bash
# Build a Python 3.11 base image from Debian bookworm packages, for sites where the
# python:3.11-slim image cannot be pulled (air-gapped, no registry). Needs root and
# debootstrap (apt-get install debootstrap). Usage:
#   docker/debian-python-base.sh [TAG]      (default TAG: moco-matryoshka/python:3.11-bookworm)
# then build with --build-arg PYTHON_IMAGE=TAG (make docker-test PYTHON_BASE=debian does both).
# ENGINE (docker|podman) and DEBIAN_MIRROR can be set in the environment.
set -euo pipefail
TAG=${1:-moco-matryoshka/python:3.11-bookworm}
ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || {
    echo "debian-python-base: debootstrap not found (apt-get install debootstrap)" >&2
    exit 1
}
[ "$(id -u)" = 0 ] || { echo "debian-python-base: debootstrap needs root" >&2; exit 1; }
root=$(mktemp -d /tmp/moco-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# python-is-python3 gives `python`, as in the python:3.11-slim image.
debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$MIRROR"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | "$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$TAG"
"$ENGINE" image ls "$TAG"
