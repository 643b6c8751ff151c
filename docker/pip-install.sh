#!/bin/sh
# `pip install` for the image builds (builder stage only): the torch index and the
# build-time CA bundle, written once for both Dockerfiles.
#   TORCH_INDEX_URL  auto: PyTorch's CPU-only wheels for VARIANT=cpu, none for gpu;
#                    empty: PyPI only; anything else: that index, searched besides PyPI.
#   secret pip-ca    a CA bundle pip trusts (a TLS-intercepting proxy's), given with
#                    --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt; it is
#                    mounted for this step only and never written into a layer
#                    (PIP_CA_SECRET: another path for it).
set -eu
case "${TORCH_INDEX_URL-auto}" in
    auto) if [ "${VARIANT}" = cpu ]; then index=https://download.pytorch.org/whl/cpu; else index=; fi ;;
    *) index=${TORCH_INDEX_URL} ;;
esac
secret=${PIP_CA_SECRET:-/run/secrets/pip-ca}
if [ -f "$secret" ]; then
    export PIP_CERT="$secret"
fi
exec pip install ${index:+--extra-index-url "$index"} "$@"
