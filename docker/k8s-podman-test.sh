#!/usr/bin/env bash
# make k8s-podman-test: the rendered overlay's pods, run for real under `podman kube play`
# with host folders for the volumes (the images from `make docker-build`): the training Job
# (one worker) -> checkpoint, the eval Job -> eval.json, the index Job -> index, the server
# Deployment -> answers its readiness probe path. docker/kube_pods.py says what is changed
# from the rendered manifests (only what a cluster adds). Settings (environment):
#   OVERLAY (cpu), RUNTIME (job; trainjob: k8s/overlays/trainjob/OVERLAY, the TrainJob's pod as
#   the Trainer would make it), KUBECTL (kubectl), PY (python with PyYAML), WORK (runs/k8s-podman-test),
#   RESULTS (JSON summary), CONTAINERS_CONF (e.g. docker/podman-nested.conf), KUBE_PLAY_FLAGS,
#   ONLY (e.g. "moco-server": run only these pods, on the volumes a previous run left)
set -euo pipefail
cd "$(dirname "$0")/.."
OVERLAY=${OVERLAY:-cpu}
RUNTIME=${RUNTIME:-job}
case $RUNTIME in job) DIR=k8s/overlays/$OVERLAY ;; trainjob) DIR=k8s/overlays/trainjob/$OVERLAY ;;
    *) echo "k8s-podman-test: RUNTIME must be job or trainjob, not '$RUNTIME'" >&2; exit 2 ;; esac
KUBECTL=${KUBECTL:-kubectl}
PY=${PY:-.venv/bin/python}
WORK=$(realpath -m "${WORK:-runs/k8s-podman-test}")
RESULTS=${RESULTS:-$WORK/k8s-podman-test.json}
read -r -a PLAY_EXTRA <<<"${KUBE_PLAY_FLAGS:-}"
die() { echo "k8s-podman-test: $*" >&2; exit 1; }
command -v podman >/dev/null || die "podman not found (apt-get install podman; docs/KUBERNETES.md)"
command -v "$KUBECTL" >/dev/null || die "'$KUBECTL' not found; it renders the overlay"

[ -n "${ONLY:-}" ] || rm -rf "$WORK/pods" "$WORK/volumes/moco-runs"
mkdir -p "$WORK/volumes/moco-runs" "$WORK/volumes/moco-data"
# The pods run as uid 10001 (fsGroup is not applied to host folders).
chown 10001:10001 "$WORK/volumes/moco-runs" "$WORK/volumes/moco-data" 2>/dev/null ||
    chmod a+rwx "$WORK/volumes/moco-runs" "$WORK/volumes/moco-data"
"$KUBECTL" kustomize "$DIR" >"$WORK/rendered.yaml"
read -r -a PODS <<<"$("$PY" docker/kube_pods.py "$WORK/rendered.yaml" "$WORK/volumes" "$WORK/pods")"
RUN_NAME=$("$PY" -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and "RUN_NAME" in d.get("data", {}): print(d["data"]["RUN_NAME"])' "$WORK/rendered.yaml")
RUNS=$WORK/volumes/moco-runs/$RUN_NAME
CONTAINERS_OF() { "$PY" -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1]))
print(d["metadata"]["name"] + "-" + d["spec"]["containers"][0]["name"])' "$WORK/pods/$1.yaml"; }

RESULT_LINES=()
as_run() { # as_run CONTAINER: "user=U read-only-root=true|false", as podman ran it
    podman inspect -f 'user={{.Config.User}} read-only-root={{.HostConfig.ReadonlyRootfs}}' "$1"
}
down() { podman kube down "$WORK/pods/$1.yaml" >/dev/null 2>&1 || true; }
trap 'for p in "${PODS[@]}"; do down "$p"; done' EXIT

play() { # play POD: start it; 0 if podman accepted it
    down "$1"
    podman kube play "${PLAY_EXTRA[@]}" --configmap "$WORK/pods/configmaps.yaml" \
        "$WORK/pods/$1.yaml" >"$WORK/$1.play.log" 2>&1 || { cat "$WORK/$1.play.log"; return 1; }
}

run_job() { # run_job POD ARTIFACT: play, wait for the container's exit, check the artifact
    local pod=$1 artifact=$2 t0 rc ctr
    t0=$SECONDS
    ctr=$(CONTAINERS_OF "$pod")
    local how=""
    if play "$pod"; then
        how=$(as_run "$ctr")
        rc=$(podman wait "$ctr")
        podman logs "$ctr" >"$WORK/$pod.log" 2>&1
    else
        rc=play-failed
    fi
    local ok=false
    [ "$rc" = 0 ] && [ -e "$artifact" ] && ok=true
    printf 'k8s-podman-test: %-12s exit %-3s %4ss  %s %s  (%s)\n' "$pod" "$rc" $((SECONDS - t0)) \
        "${artifact#"$WORK"/volumes/}" "$([ -e "$artifact" ] && echo written || echo MISSING)" "$how"
    [ $ok = true ] || tr '\r' '\n' <"$WORK/$pod.log" 2>/dev/null | grep -v '%|' | tail -15
    RESULT_LINES+=("$pod $rc $((SECONDS - t0)) ${artifact#"$WORK"/volumes/} $ok $how")
    down "$pod"
    [ $ok = true ]
}

probe() { # probe POD: wait until the container answers its readinessProbe path with 200
    local pod=$1 t0=$SECONDS ctr path port code=none
    ctr=$(CONTAINERS_OF "$pod")
    read -r path port < <("$PY" -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1]))["spec"]["containers"][0]
g = c["readinessProbe"]["httpGet"]; p = g["port"]
p = next(q["containerPort"] for q in c["ports"] if q["name"] == p) if isinstance(p, str) else p
print(g["path"], p)' "$WORK/pods/$pod.yaml")
    local how=""
    if play "$pod"; then
        how=$(as_run "$ctr")
        while [ $((SECONDS - t0)) -lt 300 ]; do
            code=$(podman exec "$ctr" python -c "import urllib.request as u
try: print(u.urlopen('http://127.0.0.1:$port$path', timeout=5).status)
except Exception as e: print(getattr(e, 'code', 'down'))" 2>/dev/null) || code=down
            [ "$code" = 200 ] && break
            [ "$(podman inspect -f '{{.State.Running}}' "$ctr" 2>/dev/null)" = true ] || break
            sleep 1
        done
        podman logs "$ctr" >"$WORK/$pod.log" 2>&1
    fi
    printf 'k8s-podman-test: %-12s GET %s:%s -> %s after %ss  (%s)\n' "$pod" "$path" "$port" "$code" \
        $((SECONDS - t0)) "$how"
    [ "$code" = 200 ] || tail -15 "$WORK/$pod.log"
    RESULT_LINES+=("$pod $code $((SECONDS - t0)) $path $([ "$code" = 200 ] && echo true || echo false) $how")
    down "$pod"
    [ "$code" = 200 ]
}

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
status=0
want moco-train && { run_job moco-train "$RUNS/checkpoint.pt" || status=1; }
[ $status = 0 ] && want moco-eval && { run_job moco-eval "$RUNS/eval.json" || status=1; }
[ $status = 0 ] && want moco-index && { run_job moco-index "$RUNS/index/manifest.json" || status=1; }
[ $status = 0 ] && want moco-server && { probe moco-server || status=1; }

"$PY" - "$RESULTS" "${DIR#k8s/overlays/}" "$(podman --version)" "$RUNS" "${RESULT_LINES[@]}" <<'PY'
import json, sys
from pathlib import Path
out, overlay, version, runs, *lines = sys.argv[1:]
pods = []
for ln in lines:
    pod, result, seconds, checked, ok, *how = ln.split()
    pods.append({"pod": pod, "result": result, "seconds": int(seconds), "checked": checked,
                 "ok": ok == "true", **dict(h.split("=", 1) for h in how)})
summary = {"overlay": overlay, "podman": version, "pods": pods}
if (Path(runs) / "eval.json").exists():
    metrics = json.loads((Path(runs) / "eval.json").read_text())["metrics"]
    summary["eval_knn_top1"] = {str(m["dim"]): round(m["knn_top1"], 4) for m in metrics}
if (Path(runs) / "index" / "manifest.json").exists():
    summary["index_count"] = json.loads((Path(runs) / "index" / "manifest.json").read_text())["count"]
Path(out).write_text(json.dumps(summary, indent=2) + "\n")
print(f"k8s-podman-test: summary in {out}")
PY
exit $status
