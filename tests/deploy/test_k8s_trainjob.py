"""The TrainJob path (k8s/overlays/trainjob, Kubeflow Trainer >= v2.2) and Kueue: the pod the
Trainer would make of the TrainJob runs the same launcher and trainer argv as the Indexed
Job of the same variant, keeps its exit-code rules, and gets its process count from the
resources; the queue label is there only when asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_k8s import K8S, _render, argv, container, env_of, expand, flag, needs_kubectl, obj
from torch.distributed.run import parse_args as torchrun_args

sys.path.insert(0, str(K8S.parent / "docker"))
import kube_pods
import trainjob_pods

VARIANTS = ("cpu", "gpu", "mig")
_RENDERED: dict[str, list[dict]] = {}


def tj_rendered(overlay: str) -> list[dict]:
    if overlay not in _RENDERED:
        docs = yaml.safe_load_all(_render(K8S / "overlays" / "trainjob" / overlay))
        _RENDERED[overlay] = [d for d in docs if d]
    return _RENDERED[overlay]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def node_pod(variant: str, index: int = 0) -> dict:
    docs = tj_rendered(variant)
    return trainjob_pods.node_pod(one(docs, "TrainJob"), one(docs, "ClusterTrainingRuntime"), index)


def pod_env_and_argv(variant: str, index: int = 0) -> tuple[dict[str, str], list[str]]:
    """The node container's env and argv as the kubelet would see them (pod `index`)."""
    docs = tj_rendered(variant)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    template = node_pod(variant, index)["template"]
    c = next(c for c in template["spec"]["containers"] if c["name"] == "node")
    kube_pods.resolve_value_from(c, configmaps, template["metadata"])
    env = kube_pods.container_env(c, configmaps)
    return env, [expand(a, env) for a in c["command"] + c["args"]]


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_trainjob_replaces_the_job_and_its_service(variant: str) -> None:
    docs = tj_rendered(variant)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Job", "moco-train") not in names and ("Service", "moco-train") not in names
    assert ("TrainJob", "moco-train") in names
    assert {("Job", "moco-eval"), ("Job", "moco-index")} <= names, "the other steps stay"
    tj = one(docs, "TrainJob")
    assert tj["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": one(docs, "ClusterTrainingRuntime")["metadata"]["name"],
    }
    assert "kueue.x-k8s.io/queue-name" not in tj["metadata"]["labels"], "queueing is opt-in"
    # Written for Trainer >= v2.2: none of the fields v2.2 removed or deprecated.
    text = yaml.safe_dump_all(docs)
    for gone in ("numProcPerNode", "elasticPolicy", "podTemplateOverrides"):
        assert gone not in text


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_trainjob_runs_the_same_trainer_argv_as_the_job(variant: str) -> None:
    _, tj_argv = pod_env_and_argv(variant)
    job_argv = argv(variant, "Job", "moco-train")
    assert tj_argv[:4] == job_argv[:4], "the same shell prelude (is_host from the index)"
    tj_train, job_train = tj_argv[tj_argv.index("-m") :], job_argv[job_argv.index("-m") :]
    assert tj_train == job_train, "trainer.train with the same flags and run settings"


@needs_kubectl
@pytest.mark.parametrize(
    ("variant", "nnodes", "nproc"), [("cpu", 2, "1"), ("gpu", 2, "auto"), ("mig", 7, "1")]
)
def test_torchrun_gets_nodes_procs_and_rendezvous_from_the_trainer(
    variant, nnodes, nproc, monkeypatch
):
    """torchrun's own parser, fed the pod's env (PET_*) and argv: what the agent would run."""
    env, args = pod_env_and_argv(variant, index=1)
    for k, v in env.items():
        if k.startswith("PET_"):
            monkeypatch.setenv(k, v)
    parsed = torchrun_args(args[4:])
    trainjob = one(tj_rendered(variant), "TrainJob")
    assert parsed.nnodes == str(nnodes) == str(trainjob["spec"]["trainer"]["numNodes"])
    assert parsed.nproc_per_node == nproc
    tj = trainjob["metadata"]["name"]
    assert parsed.rdzv_backend == "c10d"
    assert parsed.rdzv_endpoint == f"{tj}-node-0-0.{tj}:29500", "pod 0's JobSet DNS name"
    assert parsed.module and parsed.training_script == "trainer.train"
    job_nproc = flag(argv(variant, "Job", "moco-train"), "--nproc-per-node")
    assert {("1", "1"), ("auto", "gpu")} >= {(nproc, job_nproc)}, "as many processes as the Job"


def test_nproc_rule_is_the_trainers():
    """Trainer v2.3.0's torch plugin: GPUs -> auto; else the CPU request rounded up, >= 1;
    a MIG resource is not a GPU to it (hence the mig TrainJob's explicit --nproc-per-node)."""
    rule = trainjob_pods.nproc_per_node
    assert rule({"limits": {"nvidia.com/gpu": 8}}) == "auto"
    assert rule({"requests": {"cpu": "500m"}}) == "1"
    assert rule({"requests": {"cpu": "3"}, "limits": {"cpu": "8"}}) == "3"
    assert rule({"limits": {"cpu": "2500m"}}) == "3"
    assert rule({"requests": {"cpu": "4"}, "limits": {"nvidia.com/mig-1g.10gb": 1}}) == "4"
    assert rule({}) == "1"


@needs_kubectl
def test_mig_trainjob_asks_for_the_mig_overlays_slice() -> None:
    limits = one(tj_rendered("mig"), "TrainJob")["spec"]["trainer"]["resourcesPerNode"]["limits"]
    job_limits = container(obj("mig", "Job", "moco-train"))["resources"]["limits"]
    slices = {k: v for k, v in limits.items() if k.startswith("nvidia.com/")}
    assert slices == {k: v for k, v in job_limits.items() if k.startswith("nvidia.com/")}
    assert list(slices.values()) == [1]


@needs_kubectl
@pytest.mark.parametrize("index", [0, 1])
def test_only_node_zero_hosts_the_store(tmp_path: Path, index: int) -> None:
    """The runtime's own prelude, run with the pod's env and a fake python."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env, args = pod_env_and_argv("cpu", index)
    run = {"PATH": f"{tmp_path}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": env["JOB_COMPLETION_INDEX"]}
    got = subprocess.run(args, env=run, capture_output=True, text=True, check=True).stdout
    got = got.splitlines()
    assert got[:3] == ["-m", "trainer.distributed.torchrun",
                       f"--rdzv-conf=is_host={int(index == 0)},join_timeout=1800"]  # fmt: skip
    assert got[3:] == args[4:]


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_runtime_keeps_the_jobs_exit_code_rules_and_volumes(variant: str) -> None:
    job = obj(variant, "Job", "moco-train")
    node = node_pod(variant)
    rules = node["podFailurePolicy"]["rules"]
    job_rules = job["spec"]["podFailurePolicy"]["rules"]
    for r in job_rules:  # the container is "node" under the Trainer
        if "onExitCodes" in r:
            r["onExitCodes"]["containerName"] = "node"
    assert rules == job_rules, "143 resumes, 2 fails, disruptions do not count"
    spec, job_spec = node["template"]["spec"], job["spec"]["template"]["spec"]
    for key in ("restartPolicy", "terminationGracePeriodSeconds", "securityContext", "volumes"):
        assert spec[key] == job_spec[key], key
    assert spec.get("tolerations") == job_spec.get("tolerations")
    c = next(c for c in spec["containers"] if c["name"] == "node")
    jc = container(job)
    assert c["volumeMounts"] == jc["volumeMounts"]
    assert c["securityContext"] == jc["securityContext"]
    assert c["resources"] == jc["resources"]
    assert c["image"] == jc["image"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    for k in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "HF_HOME", "HOME", "PYTHONUNBUFFERED"):
        assert env[k] == env_of(variant, jc)[k]


@needs_kubectl
def test_trainjob_pod_for_podman_runs_one_worker(tmp_path: Path) -> None:
    """What make k8s-podman-test RUNTIME=trainjob plays: one node, its own DNS name local."""
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(_render(K8S / "overlays" / "trainjob" / "cpu"))
    names = kube_pods.main(rendered, tmp_path / "volumes", tmp_path / "pods")
    pod = yaml.safe_load((tmp_path / "pods" / "moco-train.yaml").read_text())
    assert names[0] == "moco-train"
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["PET_NNODES"] == "1" and env["JOB_COMPLETION_INDEX"] == "0"
    assert env["PET_NODE_RANK"] == "0" and env["PET_NPROC_PER_NODE"] == "1"
    assert pod["spec"]["hostAliases"] == [
        {"ip": "127.0.0.1", "hostnames": ["moco-train-node-0-0.moco-train"]}
    ]
    assert "moco-train-node-0-0.moco-train:29500" in c["command"]
    assert not any("$(" in a for a in c["command"] + c["args"]), "all expanded"
    assert {v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v} == {
        str((tmp_path / "volumes" / n).resolve()) for n in ("moco-data", "moco-runs")
    }


# --- Kueue --------------------------------------------------------------------------------


@needs_kubectl
def test_kueue_component_queues_the_trainjob_on_the_platforms_cluster_queue() -> None:
    docs = tj_rendered("kueue")
    tj, lq = one(docs, "TrainJob"), one(docs, "LocalQueue")
    assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == lq["metadata"]["name"]
    assert lq["metadata"]["labels"]["app.kubernetes.io/component"] == "train", "make k8s-train"
    cluster = [d for d in yaml.safe_load_all(_render(K8S / "kueue")) if d]
    cq = one(cluster, "ClusterQueue")
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    flavors = {d["metadata"]["name"] for d in cluster if d["kind"] == "ResourceFlavor"}
    covered = set()
    for group in cq["spec"]["resourceGroups"]:
        covered |= set(group["coveredResources"])
        assert {f["name"] for f in group["flavors"]} <= flavors
    for variant in VARIANTS:  # quota for every resource a TrainJob asks for
        res = one(tj_rendered(variant), "TrainJob")["spec"]["trainer"]["resourcesPerNode"]
        assert set(res.get("requests", {})) | set(res.get("limits", {})) <= covered, variant


@needs_kubectl
@pytest.mark.slow
def test_cpu_trainjob_pod_trains_against_local_code(tmp_path: Path) -> None:
    """The cpu TrainJob's pod as the Trainer would create it, one worker, run here: its own
    shell prelude, the agent (c10d rendezvous at its PET_MASTER_ADDR, pointed at this host as
    the podman run's hostAliases do) and trainer.train, for 3 steps -> a checkpoint. Stands
    in for `make k8s-podman-test RUNTIME=trainjob` where podman and the images are absent."""
    docs = tj_rendered("cpu")
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    template = node_pod("cpu")["template"]
    c = next(c for c in template["spec"]["containers"] if c["name"] == "node")
    kube_pods.resolve_value_from(c, configmaps, template["metadata"])
    env = kube_pods.container_env(c, configmaps)
    env.update(PET_NNODES="1", PET_MASTER_ADDR="127.0.0.1", HOME=str(tmp_path),
               HF_HOME=str(tmp_path / "data" / "hf"))  # fmt: skip
    args = [expand(a, env) for a in c["command"] + c["args"]]
    args = [a.replace("/runs/", f"{tmp_path}/runs/") for a in args]
    args = [f"{tmp_path}/data" if a == "/data" else a for a in args]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    run_env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(K8S.parent),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
    r = subprocess.run([*args, "--max-steps", "3"], cwd=tmp_path, env=run_env,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "runs" / env["RUN_NAME"] / "checkpoint.pt").is_file()
