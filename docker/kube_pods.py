"""Turn rendered manifests (`kubectl kustomize k8s/overlays/<name>`) into what
`podman kube play` runs: the ConfigMaps, and one Pod per workload, each with its pod
template exactly as rendered (command, args, env, probes, securityContext, mounts) and
only what a cluster would add or provide, changed:

- Jobs and Deployments become bare Pods (podman 4 plays neither); a Deployment runs one
  replica, the training Job one worker (NNODES=1);
- a TrainJob becomes the pod its ClusterTrainingRuntime makes of it (docker/trainjob_pods.py:
  what Kubeflow Trainer and JobSet would create), as one worker (PET_NNODES=1);
- the Job controller's JOB_COMPLETION_INDEX=0 is set for Indexed Jobs;
- PersistentVolumeClaims become host folders (`<host-dir>/<claim>`);
- cluster DNS for the Job's headless Service (`<job>-0.<service>`, or the pod's own
  `<hostname>.<subdomain>`) points at the pod itself;
- the kubelet's work on env is done here (podman does not do it all): `valueFrom` of a
  ConfigMap key or of the pod's labels/annotations becomes the value, and `$(VAR)` in env
  values, command and args is expanded from envFrom ConfigMaps and env.

`python docker/kube_pods.py RENDERED.yaml HOST_DIR OUT_DIR` writes OUT_DIR/configmaps.yaml
and OUT_DIR/<workload>.yaml, and prints the workload names in run order.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainjob_pods import node_pod

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


FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")


def resolve_value_from(c: dict, configmaps: dict[str, dict], meta: dict) -> None:
    """env valueFrom a ConfigMap key or the pod's labels/annotations -> a plain value."""
    for e in c.get("env", []):
        source = e.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            e["value"] = configmaps[ref["name"]]["data"][ref["key"]]
        elif "fieldRef" in source and (m := FIELD.fullmatch(source["fieldRef"]["fieldPath"])):
            e["value"] = meta.get(m[1], {})[m[2]]
        else:
            continue
        del e["valueFrom"]


def to_pod(workload: dict, configmaps: dict[str, dict], host_dir: Path) -> dict:
    kind, name = workload["kind"], workload["metadata"]["name"]
    spec = copy.deepcopy(workload["spec"]["template"]["spec"])
    meta = workload["spec"]["template"].get("metadata", {})
    for c in spec["containers"]:
        resolve_value_from(c, configmaps, meta)
        env = container_env(c, configmaps)
        extra = []
        indexed = workload["spec"].get("completionMode") == "Indexed"
        if kind == "Job" and indexed and "JOB_COMPLETION_INDEX" not in env:
            extra.append({"name": "JOB_COMPLETION_INDEX", "value": "0"})
        for e in c.get("env", []):
            if e["name"] in ("NNODES", "PET_NNODES"):
                e["value"] = env[e["name"]] = "1"
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
        fqdn = f"{spec.pop('hostname', None) or name + '-0'}.{spec.pop('subdomain')}"
        spec["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": [fqdn]}]
    spec.pop("topologySpreadConstraints", None)
    labels = meta.get("labels", {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": spec}  # fmt: skip


def main(rendered: Path, host_dir: Path, out: Path) -> list[str]:
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Job", "Deployment")}
    runtimes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterTrainingRuntime"}
    for tj in (d for d in docs if d["kind"] == "TrainJob"):
        node = node_pod(tj, runtimes[tj["spec"]["runtimeRef"]["name"]])
        job_spec = {"completionMode": "Indexed", "template": node["template"]}
        workloads[node["name"]] = {
            "kind": "Job",
            "metadata": {"name": node["name"]},
            "spec": job_spec,
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "configmaps.yaml").write_text(yaml.safe_dump_all(configmaps.values()))
    for name in ORDER:
        pod = to_pod(workloads[name], configmaps, host_dir.resolve())
        (out / f"{name}.yaml").write_text(yaml.safe_dump(pod, sort_keys=False))
    return list(ORDER)


if __name__ == "__main__":
    print(" ".join(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))))
