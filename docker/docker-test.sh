#!/usr/bin/env bash
# make docker-test: build both images, then run the whole path in containers, timed:
# train (stopped by SIGTERM mid-epoch: checkpoint + exit 143), resume in a new container,
# evaluate, build the index, serve on 127.0.0.1 and embed + search over HTTP, stop.
# Settings come from the environment (the Makefile passes them through); docs/KUBERNETES.md:
#   ENGINE           docker | podman (default: docker if its engine answers, else podman)
#   BUILD_FLAGS      extra `build` flags;  RUN_FLAGS: extra `run` flags. For podman on a
#                    nested host, CONTAINERS_CONF=$PWD/docker/podman-nested.conf sets both.
#   PYTHON_BASE      base image (python:3.11-slim); "debian": build one from Debian packages
#                    with docker/debian-python-base.sh (no registry needed)
#   TORCH_INDEX_URL  auto | empty (PyPI only) | URL   (docker/pip-install.sh)
#   PIP_CA           CA bundle pip trusts while building (a build secret, not in the image)
#   VARIANT (cpu), IMAGE_REPO (moco-matryoshka), WORK (host folder for /runs and /data),
#   RESULTS (JSON summary), SKIP_BUILD=1 (reuse the images), ONLY_BUILD=1 (make docker-build)
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-cpu}
IMAGE_REPO=${IMAGE_REPO:-moco-matryoshka}
TRAINER=$IMAGE_REPO/trainer:$VARIANT
SERVER=$IMAGE_REPO/server:$VARIANT
WORK=$(realpath -m "${WORK:-runs/docker-test}")
RESULTS=${RESULTS:-$WORK/docker-test.json}
RUN=smoke
NAME=moco-docker-test-$$
read -r -a BUILD_EXTRA <<<"${BUILD_FLAGS:-}"
read -r -a RUN_EXTRA <<<"${RUN_FLAGS:-}"

die() { echo "docker-test: $*" >&2; exit 1; }

if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman
    else die "neither a Docker engine ('docker info' failed) nor podman found; on Debian: apt-get install podman (docs/KUBERNETES.md)"
    fi
fi
command -v python3 >/dev/null || die "python3 is needed on the host for the HTTP checks"
echo "docker-test: engine $ENGINE ($("$ENGINE" --version)), work folder $WORK"

STEPS=()
failed=0
step() { # step NAME COMMAND...: run, time, record "name seconds exit-code"; after a failure,
    local name=$1 t0 rc=0 #     the later steps are recorded as skipped (exit "-")
    shift
    if [ $failed = 1 ]; then STEPS+=("$name 0 -"); return; fi
    t0=$(date +%s.%N)
    "$@" || rc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    STEPS+=("$name $secs $rc")
    [ $rc = 0 ] || failed=1
    printf 'docker-test: %-16s %7ss  exit %s\n' "$name" "$secs" "$rc"
}
cleanup() { "$ENGINE" rm -f "$NAME-train" "$NAME-server" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# ---- build ---------------------------------------------------------------------------
build() { # build trainer|server
    local args=(build -f "docker/$1.Dockerfile" --build-arg "VARIANT=$VARIANT"
        --build-arg "PYTHON_IMAGE=$BASE" -t "$IMAGE_REPO/$1:$VARIANT")
    [ -n "${TORCH_INDEX_URL+set}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    [ -n "${PIP_CA:-}" ] && args+=(--secret "id=pip-ca,src=$PIP_CA")
    # podman: Docker image format, which keeps HEALTHCHECK (OCI drops it); see the docs.
    [ "$ENGINE" = podman ] && args+=(--format docker)
    DOCKER_BUILDKIT=1 nice -n "${BUILD_NICE:-19}" "$ENGINE" "${args[@]}" "${BUILD_EXTRA[@]}" .
}
BASE=${PYTHON_BASE:-python:3.11-slim}
if [ "$BASE" = debian ]; then
    BASE=$IMAGE_REPO/python:3.11-bookworm
    if ! "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
        step base-image env ENGINE="$ENGINE" docker/debian-python-base.sh "$BASE"
    fi
fi
if [ -z "${SKIP_BUILD:-}" ]; then
    step build-trainer build trainer
    step build-server build server
fi
size() { "$ENGINE" image inspect -f '{{.Size}}' "$1"; }
TRAINER_SIZE=$(size "$TRAINER") || die "no image $TRAINER (build failed?)"
SERVER_SIZE=$(size "$SERVER") || die "no image $SERVER (build failed?)"
if [ -n "${ONLY_BUILD:-}" ]; then
    "$ENGINE" image ls --filter "reference=$IMAGE_REPO/*:$VARIANT"
    exit $failed
fi

# ---- containers ----------------------------------------------------------------------
mkdir -p "$WORK/runs" "$WORK/data"
rm -rf "${WORK:?}/runs/$RUN"
# The images run as uid 10001; the host folders stand in for the volumes.
chown 10001:10001 "$WORK/runs" "$WORK/data" 2>/dev/null || chmod a+rwx "$WORK/runs" "$WORK/data"
VOLUMES=(-v "$WORK/runs:/runs" -v "$WORK/data:/data")
TRAIN_ARGS=(--standalone --nproc-per-node=1 -m trainer.train --dataset shapes --arch convnet
    --image-size 32 --batch-size 64 --queue-size 512 --epochs 1 --workers 1
    --checkpoint-every 5 --cache-dir /data --output-dir "/runs/$RUN")
run() { "$ENGINE" run "${RUN_EXTRA[@]}" "$@"; }
ckpt=$WORK/runs/$RUN/checkpoint.pt

train_until_sigterm() {
    run -d --name "$NAME-train" --shm-size 512m --read-only --tmpfs /tmp "${VOLUMES[@]}" \
        "$TRAINER" "${TRAIN_ARGS[@]}" >/dev/null || return 1
    # The first periodic checkpoint (step 5 of 78) means the epoch is under way.
    local deadline=$((SECONDS + 600))
    until [ -f "$ckpt" ]; do
        [ $SECONDS -lt $deadline ] || { "$ENGINE" logs "$NAME-train"; return 1; }
        [ "$("$ENGINE" inspect -f '{{.State.Running}}' "$NAME-train")" = true ] ||
            { "$ENGINE" logs "$NAME-train"; return 1; }
        sleep 0.2
    done
    "$ENGINE" stop -t 120 "$NAME-train" >/dev/null
    TRAIN_EXIT=$("$ENGINE" wait "$NAME-train" 2>/dev/null || "$ENGINE" inspect -f '{{.State.ExitCode}}' "$NAME-train")
    "$ENGINE" logs "$NAME-train" >"$WORK/train-sigterm.log" 2>&1
    "$ENGINE" rm "$NAME-train" >/dev/null
    tr '\r' '\n' <"$WORK/train-sigterm.log" | grep -v '%|' | tail -5
    SAVED=$(grep -o 'stop signal: saved step [0-9]*' "$WORK/train-sigterm.log" | grep -o '[0-9]*$') ||
        { echo "no 'stop signal: saved step' in the log" >&2; return 1; }
    ! grep -q Traceback "$WORK/train-sigterm.log" || { echo "a traceback in the log" >&2; return 1; }
    [ "$TRAIN_EXIT" = 143 ] || { echo "exit code $TRAIN_EXIT, documented: 143" >&2; return 1; }
}
step train-sigterm train_until_sigterm

resume() {
    run --rm --shm-size 512m --read-only --tmpfs /tmp "${VOLUMES[@]}" "$TRAINER" \
        "${TRAIN_ARGS[@]}" >"$WORK/train-resume.log" 2>&1 || { tail -20 "$WORK/train-resume.log"; return 1; }
    tr '\r' '\n' <"$WORK/train-resume.log" | grep -E '^resumed from|^loss per dim' | tail -3
    grep -q "resumed from /runs/$RUN/checkpoint.pt at step $SAVED" "$WORK/train-resume.log"
}
step train-resume resume

python_in() { # python_in IMAGE LOG ARGS...: `python ARGS` in a container of IMAGE
    local image=$1 log=$2
    shift 2
    run --rm --read-only --tmpfs /tmp "${VOLUMES[@]}" --entrypoint python "$image" "$@" \
        >"$log" 2>&1 || { tail -20 "$log"; return 1; }
    tr '\r' '\n' <"$log" | grep -v '%|' | tail -12
}
step evaluate python_in "$TRAINER" "$WORK/evaluate.log" -m trainer.evaluate \
    --checkpoint "/runs/$RUN/checkpoint.pt" --cache-dir /data --output "/runs/$RUN/eval.json"
step index python_in "$TRAINER" "$WORK/index.log" -m trainer.build_index \
    --checkpoint "/runs/$RUN/checkpoint.pt" --dataset shapes --split train --cache-dir /data \
    --out "/runs/$RUN/index"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
serve() {
    run -d --name "$NAME-server" --read-only --tmpfs /tmp -p "127.0.0.1:$PORT:8000" \
        "${VOLUMES[@]}" -e "MOCO_CHECKPOINT=/runs/$RUN/checkpoint.pt" \
        -e "MOCO_INDEX_DIR=/runs/$RUN/index" "$SERVER" >/dev/null || return 1
    python3 docker/smoke_client.py "http://127.0.0.1:$PORT" 300 >"$WORK/http.json" ||
        { "$ENGINE" logs "$NAME-server" | tail -20; return 1; }
    cat "$WORK/http.json"
}
step serve-http serve
stop_server() {
    "$ENGINE" stop -t 30 "$NAME-server" >/dev/null
    SERVER_EXIT=$("$ENGINE" wait "$NAME-server" 2>/dev/null || "$ENGINE" inspect -f '{{.State.ExitCode}}' "$NAME-server")
    "$ENGINE" logs "$NAME-server" >"$WORK/server.log" 2>&1
    "$ENGINE" rm "$NAME-server" >/dev/null
    [ "$SERVER_EXIT" = 0 ] || { echo "server exit code $SERVER_EXIT" >&2; return 1; }
}
step stop-server stop_server
PIP_LIST=$("$ENGINE" run --rm "${RUN_EXTRA[@]}" --entrypoint pip "$SERVER" list --format json 2>/dev/null)

# ---- summary -------------------------------------------------------------------------
echo
printf '%-16s %9s %5s\n' step seconds exit
for s in "${STEPS[@]}"; do
    read -r n t rc <<<"$s"
    printf '%-16s %9s %5s\n' "$n" "$t" "$rc"
done
human() { awk -v b="$1" 'BEGIN { printf "%.2f GB", b / 1e9 }'; }
echo "image $TRAINER: $(human "$TRAINER_SIZE")"
echo "image $SERVER: $(human "$SERVER_SIZE")"
echo "training stopped by SIGTERM: exit ${TRAIN_EXIT:-?} after saving step ${SAVED:-?}"
python3 - "$RESULTS" "$ENGINE" "$($ENGINE --version)" "$TRAINER" "$TRAINER_SIZE" "$SERVER" \
    "$SERVER_SIZE" "${TRAIN_EXIT:-}" "${SAVED:-}" "$WORK/http.json" "$PIP_LIST" "$BASE" \
    "${STEPS[@]}" <<'PY'
import json, sys
from pathlib import Path
(out, engine, version, trainer, tsize, server, ssize, train_exit, saved, http, pip_list, base,
 *steps) = sys.argv[1:]
http = Path(http)
summary = {
    "engine": engine, "engine_version": version, "base_image": base,
    "images": {trainer: int(tsize), server: int(ssize)},
    "steps": [dict(zip(("step", "seconds", "exit"), (n, float(t), None if rc == "-" else int(rc))))
              for n, t, rc in (s.split() for s in steps)],
    "sigterm": {"exit_code": int(train_exit) if train_exit else None,
                "saved_step": int(saved) if saved else None},
    "http": json.loads(http.read_text()) if http.exists() and http.stat().st_size else None,
    "server_packages": sorted(p["name"] for p in json.loads(pip_list or "[]")),
}
Path(out).write_text(json.dumps(summary, indent=2) + "\n")
print(f"docker-test: summary in {out}")
PY
exit $failed
