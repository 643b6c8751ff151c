"""Turn rendered manifests (`kubectl kustomize k8s/overlays/<name>`) into what
`podman kube play` runs: the ConfigMaps, and one Pod per workload, each with its pod
template exactly as rendered (command, args, env, probes, securityContext, mounts) and
only what a cluster would add or provide, changed:

- Jobs and Deployments become bare Pods (podman 4 plays neither); a Deployment runs one
  replica, the training Job one worker (NNODES=1);
- the Job controller's JOB_COMPLETION_INDEX=0 is set for Indexed Jobs;
- PersistentVolumeClaims become host folders (`<host-dir>/<claim>`);
- cluster DNS for the Job's headless Service (`<job>-0.<service>`) points at the pod itself;
- the kubelet's `$(VAR)` expansion of env values, command and args, from the container's
  envFrom ConfigMaps and env, is done here (podman does not do it).

`python docker/kube_pods.py RENDERED.yaml HOST_DIR OUT_DIR` writes OUT_DIR/configmaps.yaml
and OUT_DIR/<workload>.yaml, and prints the workload names in run order.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import yaml

ORDER = ("moco-train", "moco-eval", "moco-index", "moco-server")
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's rule: $(NAME) of a defined variable is replaced, others stay."""
    return VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def container_env(c: dict, configmaps: dict[str, dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
    return env


def to_pod(workload: dict, configmaps: dict[str, dict], host_dir: Path) -> dict:
    kind, name = workload["kind"], workload["metadata"]["name"]
    spec = copy.deepcopy(workload["spec"]["template"]["spec"])
    for c in spec["containers"]:
        env = container_env(c, configmaps)
        extra = []
        if kind == "Job" and workload["spec"].get("completionMode") == "Indexed":
            extra.append({"name": "JOB_COMPLETION_INDEX", "value": "0"})
        for e in c.get("env", []):
            if e["name"] == "NNODES":
                e["value"] = env["NNODES"] = "1"
            if "value" in e:
                e["value"] = expand(e["value"], env)
        c["env"] = extra + c.get("env", [])
        for key in ("command", "args"):
            if key in c:
                c[key] = [expand(a, env) for a in c[key]]
    for v in spec.get("volumes", []):
        claim = v.pop("persistentVolumeClaim", None)
        if claim:
            v["hostPath"] = {"path": str(host_dir / claim["claimName"]), "type": "Directory"}
    if spec.get("subdomain"):
        fqdn = f"{name}-0.{spec.pop('subdomain')}"
        spec["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": [fqdn]}]
    spec.pop("topologySpreadConstraints", None)
    labels = workload["spec"]["template"].get("metadata", {}).get("labels", {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": spec}  # fmt: skip


def main(rendered: Path, host_dir: Path, out: Path) -> list[str]:
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Job", "Deployment")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "configmaps.yaml").write_text(yaml.safe_dump_all(configmaps.values()))
    for name in ORDER:
        pod = to_pod(workloads[name], configmaps, host_dir.resolve())
        (out / f"{name}.yaml").write_text(yaml.safe_dump(pod, sort_keys=False))
    return list(ORDER)


if __name__ == "__main__":
    print(" ".join(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))))
