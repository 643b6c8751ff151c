#!/usr/bin/env bash
# A recorded curl session against a real `python -m server` holding an index folder:
# /v1/model, /v1/dims, adaptive searches with rerank_dim / shortlist / nprobe (or ef_search),
# an exact search for contrast, a knob out of bounds, and the server's resident memory.
# Every command is printed as run; long vectors and base64 strings are trimmed.
#
#   bench/search_curl_session.sh CHECKPOINT INDEX_DIR OUT.txt [SHORTLIST_DIM RERANK_DIM]
set -euo pipefail
ckpt=$1 index=$2 out=$3 small=${4:-32} full=${5:-256}
py=${PYTHON:-.venv/bin/python}
port=$($py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
log=$(mktemp)
MOCO_READ_ONLY=1 $py -m server --checkpoint "$ckpt" --index-dir "$index" --port "$port" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do
    curl -sf "$url/readyz" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
    sleep 1
done

# One held-out `shapes` image (seed 999999: not among the indexed ones) as a base64 PNG.
img=$($py - <<'EOF'
import base64, io
from PIL import Image
from trainer import shapes
images, _ = shapes.generate(1, 32, seed=999_999)
buf = io.BytesIO()
Image.fromarray(images[0]).save(buf, format="PNG")
print(base64.b64encode(buf.getvalue()).decode())
EOF
)

trim() {
    $py -c '
import json, sys
def t(v):
    if isinstance(v, list) and len(v) > 8 and all(isinstance(x, float) for x in v):
        return v[:4] + [f"... {len(v) - 4} more"]
    if isinstance(v, str) and len(v) > 80:
        return v[:40] + f"... ({len(v)} chars)"
    if isinstance(v, dict):
        return {k: t(x) for k, x in v.items()}
    if isinstance(v, list):
        return [t(x) for x in v]
    return v
def show(v, pad=""):  # JSON, one line per value that fits in 100 characters
    flat = json.dumps(v)
    if len(flat) <= 100 or not isinstance(v, dict | list) or not v:
        return flat
    inner = pad + "  "
    if isinstance(v, dict):
        parts = [f"{inner}{json.dumps(k)}: {show(x, inner)}" for k, x in v.items()]
        return "{\n" + ",\n".join(parts) + "\n" + pad + "}"
    return "[\n" + ",\n".join(inner + show(x, inner) for x in v) + "\n" + pad + "]"
raw = sys.stdin.read()
body, _, timing = raw.rpartition("\n")
print(show(t(json.loads(body))))
print(timing)
'
}

run() {  # run METHOD PATH [JSON]: print the command (image trimmed), then the trimmed reply
    local shown=${3:-}
    shown=${shown//$img/<base64 PNG, ${#img} chars>}
    echo "\$ curl -s -X $1 $url$2${3:+ -H 'content-type: application/json' -d '$shown'}"
    if [ -n "${3:-}" ]; then
        curl -s -X "$1" "$url$2" -H 'content-type: application/json' -d "$3" \
            -w '\n(HTTP %{http_code}, %{time_total} s)'
    else
        curl -s -X "$1" "$url$2" -w '\n(HTTP %{http_code}, %{time_total} s)'
    fi | trim
    echo
}

{
    echo "# bench/search_curl_session.sh $*"
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# server: MOCO_READ_ONLY=1 python -m server --checkpoint $ckpt --index-dir $index --port $port"
    echo
    run GET /v1/model
    run GET /v1/dims
    q='"images": ["'$img'"], "k": 5'
    run POST /v1/search "{$q, \"dim\": $full}"
    run POST /v1/search "{$q, \"dim\": $small, \"rerank_dim\": $full}"
    run POST /v1/search "{$q, \"dim\": $small, \"rerank_dim\": $full, \"shortlist\": 1000, \"nprobe\": 128}"
    run POST /v1/search "{$q, \"dim\": $small, \"rerank_dim\": $full, \"shortlist\": 200, \"nprobe\": 16}"
    run POST /v1/search "{$q, \"dim\": $small, \"rerank_dim\": $full, \"shortlist\": 200, \"ef_search\": 64}"
    run POST /v1/search "{$q, \"dim\": $small, \"rerank_dim\": $full, \"nprobe\": 0}"
    echo "\$ grep -E 'VmRSS|RssAnon|RssFile|VmHWM' /proc/<server pid>/status"
    grep -E 'VmRSS|RssAnon|RssFile|VmHWM' /proc/$server/status
} >"$out"
echo "wrote $out"
