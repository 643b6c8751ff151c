"""k8s/validate.py, the offline check of the new overlays: every rendered object, custom
resources against the vendored CRD schemas (Kubeflow Trainer v2.3.0, Kueue v0.19.2) and the
rest, ResourceClaimTemplate included, against the Kubernetes API schema; and for each new
overlay a broken field that must fail."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from test_k8s import K8S, _render, needs_kubectl

sys.path.insert(0, str(K8S))
import validate

# (what is rendered, the Kubernetes versions make k8s-validate checks it at)
CHECKED = [
    ("overlays/trainjob/cpu", ("1.31.0", "1.37.0")),
    ("overlays/trainjob/gpu", ("1.31.0", "1.37.0")),
    ("overlays/trainjob/mig", ("1.31.0", "1.37.0")),
    ("overlays/trainjob/kueue", ("1.31.0", "1.37.0")),
    ("kueue", ("1.31.0", "1.37.0")),
    ("overlays/dra/gpu", ("1.35.0", "1.37.0")),
    ("overlays/dra/mig", ("1.35.0", "1.37.0")),
]


def docs_of(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render(K8S / path)) if d]


def check(docs: list[dict], version: str) -> list[str]:
    errors, _ = validate.validate_stream(yaml.safe_dump_all(docs), version)
    return errors


def the(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


@needs_kubectl
@pytest.mark.parametrize(("path", "versions"), CHECKED)
def test_rendered_overlay_is_valid(path: str, versions: tuple[str, ...]) -> None:
    docs = docs_of(path)
    for version in versions:
        errors, checked = validate.validate_stream(yaml.safe_dump_all(docs), version)
        assert errors == [], errors
        kinds = {k for ks in checked.values() for k in ks}
        assert kinds == {d["kind"] for d in docs}, "every object was checked against a schema"


def _node_spec(runtime: dict) -> dict:
    return runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]


# One broken field per new overlay (and per custom kind); each must be refused.
BROKEN: list[tuple[str, str, str, Callable[[list[dict]], None], str]] = [
    ("overlays/trainjob/cpu", "1.31.0", "TrainJob: misspelt trainer field",
     lambda d: the(d, "TrainJob")["spec"]["trainer"].update(numNode=2), "'numNode' was unexpected"),
    ("overlays/trainjob/cpu", "1.37.0", "TrainJob: PodTemplateOverrides (gone in v2.2)",
     lambda d: the(d, "TrainJob")["spec"].update(podTemplateOverrides=[]), "podTemplateOverrides"),
    ("overlays/trainjob/gpu", "1.31.0", "runtime: torch numProcPerNode (gone in v2.2)",
     lambda d: the(d, "ClusterTrainingRuntime")["spec"]["mlPolicy"]["torch"].update(
         numProcPerNode="auto"), "'numProcPerNode' was unexpected"),
    ("overlays/trainjob/gpu", "1.37.0", "runtime: torch elasticPolicy (gone in v2.2)",
     lambda d: the(d, "ClusterTrainingRuntime")["spec"]["mlPolicy"]["torch"].update(
         elasticPolicy={"maxNodes": 4}), "'elasticPolicy' was unexpected"),
    ("overlays/trainjob/mig", "1.31.0", "TrainJob: numNodes of the wrong type",
     lambda d: the(d, "TrainJob")["spec"]["trainer"].update(numNodes="7"), "is not of type"),
    ("overlays/trainjob/mig", "1.37.0", "runtime: a misspelt pod spec field deep inside",
     lambda d: _node_spec(the(d, "ClusterTrainingRuntime"))["template"]["spec"].update(
         restartPolicyy="Never"), "'restartPolicyy' was unexpected"),
    ("overlays/trainjob/kueue", "1.31.0", "LocalQueue: misspelt field",
     lambda d: the(d, "LocalQueue")["spec"].update(clusterQueu="moco"), "'clusterQueu'"),
    ("overlays/trainjob/kueue", "1.37.0", "TrainJob: bad label value (ObjectMeta)",
     lambda d: the(d, "TrainJob")["metadata"]["labels"].update({"kueue.x-k8s.io/queue-name": 1}),
     "metadata"),
    ("kueue", "1.31.0", "ClusterQueue: quota without its resource name",
     lambda d: the(d, "ClusterQueue")["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]
     .pop("name"), "'name' is a required property"),
    ("kueue", "1.37.0", "ResourceFlavor: misspelt field",
     lambda d: the(d, "ResourceFlavor")["spec"].update(nodeLabel={}), "'nodeLabel'"),
    ("overlays/dra/gpu", "1.35.0", "ResourceClaimTemplate: misspelt deviceClassName",
     lambda d: the(d, "ResourceClaimTemplate")["spec"]["spec"]["devices"]["requests"][0]["exactly"]
     .update(deviceClassName=None, deviceClass="gpu.nvidia.com"), "deviceClass"),
    ("overlays/dra/mig", "1.35.0", "ResourceClaimTemplate: misspelt constraint",
     lambda d: the(d, "ResourceClaimTemplate")["spec"]["spec"]["devices"]["constraints"][0]
     .update(matchAttributes="gpu.nvidia.com/parentUUID"), "matchAttributes"),
    ("overlays/dra/mig", "1.37.0", "pod: a claim entry with a misspelt field",
     lambda d: next(x for x in d if x["kind"] == "Job")["spec"]["template"]["spec"][
         "resourceClaims"][0].update(resourceClaimTemplate="moco-mig-slice"),
     "resourceClaimTemplate"),
]  # fmt: skip


@needs_kubectl
@pytest.mark.parametrize(
    ("path", "version", "what", "mutate", "match"), BROKEN, ids=[b[2] for b in BROKEN]
)
def test_a_broken_field_fails_validation(path, version, what, mutate, match) -> None:
    docs = docs_of(path)
    assert check(docs, version) == []
    mutate(docs)
    errors = check(docs, version)
    assert errors and any(match in e for e in errors), errors


@needs_kubectl
def test_dra_overlay_needs_resource_v1() -> None:
    """ResourceClaimTemplate resource.k8s.io/v1 does not exist in 1.31: refused, not skipped."""
    errors = check(docs_of("overlays/dra/gpu"), "1.31.0")
    assert errors and all("no schema for ResourceClaimTemplate" in e for e in errors)


def test_unknown_custom_kind_is_an_error_not_a_warning() -> None:
    doc = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "PyTorchJob",
           "metadata": {"name": "x"}, "spec": {}}  # fmt: skip
    errors, _ = validate.validate_stream(yaml.safe_dump(doc), "1.35.0")
    assert errors and "no schema for PyTorchJob" in errors[0]


def test_strict_schema_keeps_what_the_crd_leaves_open() -> None:
    schema = validate.strict_schema({
        "type": "object",
        "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"a": {"type": "string"}}},
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "q": {"x-kubernetes-int-or-string": True},
        },
    })  # fmt: skip
    v = validate.jsonschema.Draft7Validator(schema)
    assert v.is_valid({"open": {"b": 1}, "q": "500m"}) and v.is_valid({"q": 2})
    assert not v.is_valid({"closed": {"b": 1}})
    assert not v.is_valid({"q": [1]})
    assert not v.is_valid({"extra": 1})


def test_vendored_crds_are_the_pinned_releases() -> None:
    readme = (K8S / "crds" / "README.md").read_text()
    sources = {s.source for s in validate.custom_schemas().values()}
    assert sources == {"kubeflow-trainer-v2.3.0", "kueue-v0.19.2"}
    for s in sources:
        assert f"`{s}/`" in readme
    for path in sorted((K8S / "crds").glob("*/*.yaml")):
        assert str(path.relative_to(K8S / "crds")) in readme, "its sha256 is listed"


@needs_kubectl
def test_cli_reports_each_version(capsys, monkeypatch, tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(_render(K8S / "overlays" / "dra" / "mig"))
    assert validate.main(["-k", "1.35.0", "-k", "1.37.0", "--label", "dra/mig", str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dra/mig: valid (Kubernetes 1.35.0, strict): ConfigMap")
    assert out[1].startswith("dra/mig: valid (Kubernetes 1.37.0, strict): ConfigMap")
    assert len(out) == 2 and "ResourceClaimTemplate" in out[0]
    assert validate.main(["-k", "1.31.0", str(f)]) == 1
