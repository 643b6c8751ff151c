"""The training pods Kubeflow Trainer (v2.3) and JobSet would create for a TrainJob, so the
TrainJob path can be run without either (`make k8s-podman-test RUNTIME=trainjob`) and tested.

Follows the Trainer v2.3.0 sources: the runtime's replicatedJob labelled
`trainer.kubeflow.org/trainjob-ancestor-step: trainer` runs numNodes pods; in its container
`node` the TrainJob's image/command/args replace the runtime's, its env is upserted, its
resourcesPerNode become the resources (pkg/runtime/framework/plugins/jobset/builder.go);
the torch plugin adds PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the pod's completion
index), PET_MASTER_ADDR=<trainjob>-node-0-0.<trainjob>, PET_MASTER_PORT=29500 and port
29500 (plugins/torch/torch.go); runtimePatches are merged into the pod spec. JobSet adds
the jobset-name label and the pod's DNS name <trainjob>-node-<job>-<index>.<trainjob>.
"""

from __future__ import annotations

import copy
import math
import re

ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"
MASTER_PORT = 29500
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _quantity(q: object) -> float:
    """A Kubernetes quantity as a number (cpu: 500m -> 0.5)."""
    s = str(q)
    if s.endswith("m"):
        return int(s[:-1]) / 1000
    m = re.fullmatch(r"([0-9.]+)([KMGTPE]i?)?", s)
    if not m:
        raise ValueError(f"not a quantity: {q!r}")
    return float(m[1])


def nproc_per_node(resources: dict) -> str:
    """PET_NPROC_PER_NODE as the torch plugin derives it (no numProcPerNode given): "auto"
    when a resource whose name contains "gpu" is requested or limited, else the CPU
    request (or limit) rounded up, at least 1. A MIG resource name has no "gpu" in it."""
    for part in ("requests", "limits"):
        for name, q in resources.get(part, {}).items():
            if "gpu" in name.lower() and _quantity(q) > 0:
                return "auto"
    cpu = resources.get("requests", {}).get("cpu") or resources.get("limits", {}).get("cpu")
    return str(max(1, math.ceil(_quantity(cpu)) if cpu is not None else 0))


def _upsert(items: list[dict], new: list[dict], key: str = "name") -> list[dict]:
    out = [copy.deepcopy(i) for i in items]
    for n in new:
        at = next((k for k, i in enumerate(out) if i[key] == n[key]), None)
        if at is None:
            out.append(copy.deepcopy(n))
        else:
            out[at] = copy.deepcopy(n)
    return out


def _patch_pod_spec(spec: dict, patch: dict) -> None:
    """RuntimePatches' pod spec fields: lists merge by name, the rest replace."""
    for field, value in patch.items():
        if field in ("volumes", "imagePullSecrets"):
            spec[field] = _upsert(spec.get(field, []), value)
        elif field in ("containers", "initContainers"):
            for cp in value:
                c = next(c for c in spec[field] if c["name"] == cp["name"])
                for k in ("env", "volumeMounts"):
                    if k in cp:
                        c[k] = _upsert(c.get(k, []), cp[k], "name" if k == "env" else "mountPath")
                if "securityContext" in cp:
                    c["securityContext"] = cp["securityContext"]
        else:
            spec[field] = copy.deepcopy(value)


def node_pod(trainjob: dict, runtime: dict, index: int = 0) -> dict:
    """The pod for node `index` of the trainer Job (its template, with what the Trainer,
    JobSet and the Job controller set for that pod)."""
    name = trainjob["metadata"]["name"]
    rjob = next(
        r for r in runtime["spec"]["template"]["spec"]["replicatedJobs"]
        if r["template"].get("metadata", {}).get("labels", {}).get(ANCESTOR) == "trainer"
    )  # fmt: skip
    template = copy.deepcopy(rjob["template"]["spec"]["template"])
    spec = template["spec"]
    trainer = trainjob["spec"].get("trainer", {})
    num_nodes = trainer.get("numNodes", runtime["spec"]["mlPolicy"].get("numNodes", 1))
    c = next(c for c in spec["containers"] if c["name"] == "node")
    for field in ("image", "command", "args"):
        if field in trainer:
            c[field] = copy.deepcopy(trainer[field])
    resources = trainer.get("resourcesPerNode", c.get("resources", {}))
    c["resources"] = copy.deepcopy(resources)
    pet = [
        {"name": "PET_NNODES", "value": str(num_nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": nproc_per_node(resources)},
        {"name": "PET_NODE_RANK",
         "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}},
        {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
    ]  # fmt: skip
    # The Job controller's, in every pod of an Indexed Job (JobSet's Jobs are).
    index_env = {"name": "JOB_COMPLETION_INDEX", "valueFrom": pet[2]["valueFrom"]}
    c["env"] = _upsert(_upsert(c.get("env", []), trainer.get("env", [])), [*pet, index_env])
    if not any(p.get("containerPort") == MASTER_PORT for p in c.get("ports", [])):
        c.setdefault("ports", []).append({"containerPort": MASTER_PORT})
    for p in trainjob["spec"].get("runtimePatches", []):
        jobs = p.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {})
        for rp in jobs.get("replicatedJobs", []):
            if rp["name"] == rjob["name"]:
                pod_patch = rp.get("template", {}).get("spec", {}).get("template", {})
                _patch_pod_spec(spec, pod_patch.get("spec", {}))
    meta = template.setdefault("metadata", {})
    meta.setdefault("labels", {})[JOBSET_NAME] = name
    meta.setdefault("annotations", {})[COMPLETION_INDEX] = str(index)
    spec["hostname"] = f"{name}-{rjob['name']}-0-{index}"
    spec["subdomain"] = name
    return {"name": name, "completions": num_nodes, "template": template,
            "podFailurePolicy": rjob["template"]["spec"].get("podFailurePolicy")}  # fmt: skip
