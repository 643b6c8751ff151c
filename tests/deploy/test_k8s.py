"""Kubernetes manifests: every overlay renders and validates offline, the rendered Jobs ask
for the right accelerator, and their argv is the project's real CLI (run, not copied)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("gpu", "mig", "cpu")
VALIDATE_VERSIONS = ("1.31.0", "1.37.0")
KUBECTL = shutil.which("kubectl")
VALIDATOR = Path(sys.executable).with_name("kubernetes-validate")

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not installed: `kubectl kustomize` renders the overlays"
)


def _render(path: Path) -> str:
    return subprocess.run(
        [KUBECTL, "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout


_RENDERED: dict[str, list[dict]] = {}


def rendered(overlay: str) -> list[dict]:
    if overlay not in _RENDERED:
        docs = yaml.safe_load_all(_render(K8S / "overlays" / overlay))
        _RENDERED[overlay] = [d for d in docs if d]
    return _RENDERED[overlay]


def obj(overlay: str, kind: str, name: str) -> dict:
    found = [d for d in rendered(overlay) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind}/{name}"
    return found[0]


def container(o: dict) -> dict:
    containers = o["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(overlay: str, c: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env,
    each env value expanded against what came before."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        name = src["configMapRef"]["name"]
        env.update(obj(overlay, "ConfigMap", name)["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
    return env


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: `$$` is a literal `$`, unknown names stay as written."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, s)


def argv(overlay: str, kind: str, name: str) -> list[str]:
    c = container(obj(overlay, kind, name))
    env = env_of(overlay, c)
    return [expand(a, env) for a in c.get("command", []) + c.get("args", [])]


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} expected once in {args}"
    return args[args.index(name) + 1]


def accelerator_limits(c: dict) -> dict:
    limits = c.get("resources", {}).get("limits", {})
    return {k: v for k, v in limits.items() if k.startswith("nvidia.com/")}


@needs_kubectl
@pytest.mark.parametrize("version", VALIDATE_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_offline(overlay: str, version: str) -> None:
    r = subprocess.run(
        [str(VALIDATOR), "--strict", "--quiet", "-k", version, "-"],
        input=_render(K8S / "overlays" / overlay),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@needs_kubectl
def test_hpa_component_renders_and_validates(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / "cpu", tmp_path)],
                "components": [os.path.relpath(K8S / "components" / "hpa", tmp_path)],
            }
        )
    )
    text = _render(tmp_path)
    hpa = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa and hpa[0]["spec"]["scaleTargetRef"]["name"] == "moco-server"
    r = subprocess.run(
        [str(VALIDATOR), "--strict", "--quiet", "-"], input=text, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


@needs_kubectl
@pytest.mark.parametrize(
    ("overlay", "resource", "nproc", "backend"),
    [
        ("gpu", "nvidia.com/gpu", "gpu", "nccl"),
        ("mig", "nvidia.com/mig-1g.10gb", "1", "gloo"),
        ("cpu", None, "1", "gloo"),
    ],
)
def test_training_job_accelerator_and_procs(overlay, resource, nproc, backend) -> None:
    job = obj(overlay, "Job", "moco-train")
    limits = accelerator_limits(container(job))
    if resource is None:
        assert limits == {}
    else:
        assert list(limits) == [resource]
        if overlay == "mig":
            assert int(limits[resource]) == 1, "one MIG slice per pod"
    args = argv(overlay, "Job", "moco-train")
    assert flag(args, "--nproc-per-node") == nproc
    assert flag(args, "--dist-backend") == backend


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_accelerated_workload_gets_the_same_kind_of_device(overlay: str) -> None:
    expected = {"gpu": "nvidia.com/gpu", "mig": "nvidia.com/mig-1g.10gb", "cpu": None}[overlay]
    for d in rendered(overlay):
        if d["kind"] in ("Job", "Deployment"):
            keys = list(accelerator_limits(container(d)))
            assert keys == ([expected] if expected else []), d["metadata"]["name"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_training_job_is_an_elastic_torchrun_gang(overlay: str) -> None:
    job = obj(overlay, "Job", "moco-train")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    c = container(job)
    env = env_of(overlay, c)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["NNODES"])

    svc = obj(overlay, "Service", pod["subdomain"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}

    args = argv(overlay, "Job", "moco-train")
    assert args[:2] == ["/bin/sh", "-c"] and args[3] == "torchrun"
    assert "exec python -m trainer.distributed.torchrun " in args[2], (
        "container exit codes (143, 2)"
    )
    torchrun = args[4:]
    assert flag(torchrun, "--nnodes") == env["NNODES"]
    assert flag(torchrun, "--rdzv-backend") == "c10d"
    host, port = flag(torchrun, "--rdzv-endpoint").split(":")
    assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    assert int(flag(torchrun, "--max-restarts")) >= 1
    assert torchrun[torchrun.index("-m") + 1] == "trainer.train"
    assert flag(torchrun, "--output-dir") == f"/runs/{env['RUN_NAME']}"
    assert flag(torchrun, "--cache-dir") == "/data", "datasets cached on the data volume"

    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    exit_rules = {
        r["action"]: r["onExitCodes"]["values"]
        for r in rules
        if r.get("onExitCodes", {}).get("containerName") == c["name"]
    }
    # the torchrun wrapper: 143 = stopped by SIGTERM after saving (resumes), 2 = usage error.
    assert exit_rules == {"Ignore": [143], "FailJob": [2]}
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert env["NCCL_SOCKET_IFNAME"] and env["GLOO_SOCKET_IFNAME"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    claims = {volumes[mounts[p]]["persistentVolumeClaim"]["claimName"] for p in ("/data", "/runs")}
    assert claims == {"moco-data", "moco-runs"}
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]


@needs_kubectl
@pytest.mark.parametrize("index", ["0", "1", "6"])
def test_only_pod_zero_hosts_the_rendezvous_store(tmp_path: Path, index: str) -> None:
    """Runs the manifest's own shell prelude with a fake python that prints its argv."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    args = argv("cpu", "Job", "moco-train")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": index}
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    got = out.splitlines()
    assert got[:2] == ["-m", "trainer.distributed.torchrun"]
    got = got[2:]
    assert got[0] == f"--rdzv-conf=is_host={int(index == '0')},join_timeout=1800"
    assert got[1:] == args[4:], "the prelude must pass the torchrun argv through unchanged"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_eval_and_index_jobs_use_the_run_checkpoint(overlay: str) -> None:
    env = env_of(overlay, container(obj(overlay, "Job", "moco-eval")))
    run = f"/runs/{env['RUN_NAME']}"
    assert argv(overlay, "Job", "moco-eval") == [
        "python", "-m", "trainer.evaluate", "--checkpoint", f"{run}/checkpoint.pt",
        "--dataset", env["DATASET"], "--cache-dir", "/data", "--output", f"{run}/eval.json",
    ]  # fmt: skip
    assert argv(overlay, "Job", "moco-index") == [
        "python", "-m", "trainer.build_index", "--checkpoint", f"{run}/checkpoint.pt",
        "--dataset", env["DATASET"], "--split", "train", "--cache-dir", "/data",
        "--out", f"{run}/index",
    ]  # fmt: skip


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_readers_and_single_writer(overlay: str) -> None:
    readers = obj(overlay, "Deployment", "moco-server")
    writer = obj(overlay, "Deployment", "moco-server-writer")
    r_env = env_of(overlay, container(readers))
    w_env = env_of(overlay, container(writer))
    assert readers["spec"]["replicas"] > 1 and r_env["MOCO_READ_ONLY"] == "true"
    assert writer["spec"]["replicas"] == 1 and w_env["MOCO_READ_ONLY"] == "false"
    assert writer["spec"]["strategy"]["type"] == "Recreate"
    run = f"/runs/{r_env['RUN_NAME']}"
    for env in (r_env, w_env):
        assert env["MOCO_CHECKPOINT"] == f"{run}/checkpoint.pt"
        assert env["MOCO_INDEX_DIR"] == f"{run}/index"
        assert env["MOCO_PORT"] == "8000"
    for d in (readers, writer):
        c = container(d)
        assert "command" not in c and "args" not in c, "the image's entrypoint is the server"
        key = next(e for e in c["env"] if e["name"] == "MOCO_API_KEY")
        assert key["valueFrom"]["secretKeyRef"]["name"] == "moco-api-key"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    w_key = next(e for e in container(writer)["env"] if e["name"] == "MOCO_API_KEY")
    assert w_key["valueFrom"]["secretKeyRef"].get("optional") is not True
    assert all(m.get("readOnly") for m in container(readers)["volumeMounts"] if m["name"] == "runs")

    pdb = obj(overlay, "PodDisruptionBudget", "moco-server")
    assert pdb["spec"]["selector"]["matchLabels"] == readers["spec"]["selector"]["matchLabels"]
    for name in ("moco-server", "moco-server-writer"):
        svc = obj(overlay, "Service", name)
        target = readers if name == "moco-server" else writer
        assert svc["spec"]["selector"] == target["spec"]["selector"]["matchLabels"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(overlay: str) -> None:
    for d in rendered(overlay):
        if d["kind"] not in ("Job", "Deployment"):
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        c = container(d)
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert c["resources"]["requests"]["memory"]
        tag = c["image"].rsplit(":", 1)[1]
        assert tag == ("cpu" if overlay == "cpu" else "gpu")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_use_the_trainer_image_and_deployments_the_server_image(overlay: str) -> None:
    """The server image has no training extras (datasets), which the index build needs."""
    for d in rendered(overlay):
        if d["kind"] in ("Job", "Deployment"):
            repo = container(d)["image"].rsplit(":", 1)[0]
            role = "trainer" if d["kind"] == "Job" else "server"
            assert repo == f"moco-matryoshka/{role}", d["metadata"]["name"]


def _local(args: list[str], tmp_path: Path) -> list[str]:
    """Volume paths (/runs, /data) moved under tmp_path."""
    args = [a.replace("/runs/", f"{tmp_path}/runs/") for a in args]
    return [f"{tmp_path}/data" if a == "/data" else a for a in args]


def _train_argv_for_local_run(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The cpu overlay's trainer argv with the launcher made local and /runs moved."""
    job = obj("cpu", "Job", "moco-train")
    env = env_of("cpu", container(job))
    torchrun = argv("cpu", "Job", "moco-train")[4:]
    script = torchrun[torchrun.index("-m") + 2 :]
    script = _local(script, tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    return [*cmd, "-m", "trainer.train", *script, "--max-steps", "3"], env


@needs_kubectl
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("trainer.train") is None, reason="trainer.train not present yet"
)
def test_cpu_overlay_argv_runs_against_local_code(tmp_path: Path) -> None:
    """The manifest's trainer, evaluation and index argv run against this checkout, so a
    manifest cannot drift from the CLI."""
    cmd, env = _train_argv_for_local_run(tmp_path)
    run_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(ROOT),
    }
    r = subprocess.run(cmd, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "runs" / env["RUN_NAME"]
    assert (run / "checkpoint.pt").is_file()

    for name, module in (
        ("moco-eval", "trainer.evaluate"),
        ("moco-index", "trainer.build_index"),
    ):
        if importlib.util.find_spec(module) is None:
            continue
        args = _local(argv("cpu", "Job", name), tmp_path)
        assert args[0] == "python"
        r = subprocess.run(
            [sys.executable, *args[1:]],
            cwd=tmp_path,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, f"{name}: " + r.stdout[-3000:] + r.stderr[-3000:]
    if importlib.util.find_spec("trainer.evaluate") is not None:
        assert (run / "eval.json").is_file()
    if importlib.util.find_spec("trainer.build_index") is not None:
        assert (run / "index").is_dir()


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_trainer_argv_parses(overlay: str) -> None:
    """Cheap drift guard for the overlays the slow test cannot run (gpu, mig)."""
    from trainer.config import parse_train_args

    torchrun = argv(overlay, "Job", "moco-train")[4:]
    cfg = parse_train_args(torchrun[torchrun.index("-m") + 2 :])
    env = env_of(overlay, container(obj(overlay, "Job", "moco-train")))
    assert cfg.dataset == env["DATASET"] and cfg.dist_backend == env["DIST_BACKEND"]
    assert str(cfg.output_dir) == f"/runs/{env['RUN_NAME']}"
